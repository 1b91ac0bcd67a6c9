//! The hardened listener under the publish and admin ports: an accept loop
//! that no error stops (out of descriptors, it pauses and tries again), a
//! cap on concurrent connections answered with an immediate 503, and every
//! connection served by hyper with bounded heads, a header deadline that is
//! also the keep-alive idle limit, and an idle timeout on the socket.
//!
//! It must not know what the handlers do; it only keeps peers from hurting
//! the port or each other.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::task::{JoinHandle, JoinSet};

use crate::admin::metrics::Metrics;
use crate::http::idle::Idle;
use crate::http::Answer;
use crate::limits::{
    ACCEPT_ERROR_PAUSE, HTTP_HEADER_TIMEOUT, HTTP_IDLE_TIMEOUT, HTTP_READ_BUFFER, MAX_HEADERS,
    MAX_REQUEST_HEAD,
};

/// Written to a connection over the cap before it is closed: it is all we
/// can afford to say, and it tells the client to come back.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: text/plain\r\nContent-Length: 20\r\nConnection: close\r\n\r\ntoo many connections";

/// Why an HTTP service could not start. Fatal at start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for the {what}: {message}")]
pub struct BindError {
    pub what: &'static str,
    pub addr: SocketAddr,
    pub message: String,
}

/// Which counter of [`Metrics`] counts the connections a port turned away.
pub type BusyCounter = fn(&Metrics) -> &AtomicU64;

/// A listening HTTP port served on the shared runtime.
pub struct Service {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Service {
    /// Binds `addr` and serves each request with `handle`, at most
    /// `max_connections` connections at once.
    pub fn start<H, F>(
        runtime: &Handle,
        what: &'static str,
        addr: SocketAddr,
        max_connections: usize,
        metrics: (Arc<Metrics>, BusyCounter),
        handle: H,
    ) -> Result<Service, BindError>
    where
        H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
        F: Future<Output = Answer> + Send + 'static,
    {
        let bind_err = |e: std::io::Error| BindError {
            what,
            addr,
            message: e.to_string(),
        };
        let listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let bound = listener.local_addr().map_err(bind_err)?;
        let listener = {
            let _in_runtime = runtime.enter();
            TcpListener::from_std(listener).map_err(bind_err)?
        };
        let task = runtime.spawn(accept_loop(
            what,
            listener,
            max_connections,
            metrics,
            Arc::new(handle),
        ));
        Ok(Service { addr: bound, task })
    }

    /// Stops accepting and drops every connection of this port.
    pub fn stop(self) {
        self.task.abort();
    }
}

/// Accepts forever. Connections live in a `JoinSet` owned here, so
/// stopping this task ends them too, and its length is the live count.
async fn accept_loop<H, F>(
    what: &'static str,
    listener: TcpListener,
    max_connections: usize,
    (metrics, busy): (Arc<Metrics>, BusyCounter),
    handle: Arc<H>,
) where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Answer> + Send + 'static,
{
    let mut conns = JoinSet::new();
    let mut paused = false;
    loop {
        tokio::select! {
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    paused = false;
                    if conns.len() >= max_connections {
                        busy(&metrics).fetch_add(1, Ordering::Relaxed);
                        // A fresh socket's send buffer is empty: this never blocks.
                        let _ = stream.try_write(BUSY);
                        continue;
                    }
                    conns.spawn(serve(stream, handle.clone()));
                }
                Err(e) if is_about_one_connection(&e) => {}
                Err(e) => {
                    if !paused {
                        tracing::warn!(port = what, error = %e, "accept failed; pausing and retrying");
                    }
                    paused = true;
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    }
}

/// Accept errors that concern only the connection being accepted (it was
/// reset or aborted before we got to it): try the next one at once.
fn is_about_one_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    )
}

/// One connection: HTTP/1.1 with keep-alive under every limit.
async fn serve<H, F>(stream: TcpStream, handle: Arc<H>)
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Answer> + Send + 'static,
{
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(Idle::new(stream, HTTP_IDLE_TIMEOUT));
    let service = service_fn(move |request| {
        let answer = handle(request);
        async move { Ok::<_, Infallible>(answer.await) }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HTTP_HEADER_TIMEOUT)
        .max_buf_size(HTTP_READ_BUFFER)
        .max_headers(MAX_HEADERS)
        .max_header_size(MAX_REQUEST_HEAD)
        .keep_alive(true)
        .serve_connection(io, service)
        .await;
    if let Err(e) = served {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}
