//! The small blocking HTTP services beside the data port (publish API and
//! admin): tiny_http listeners, each served by a few threads of its own, and
//! the helpers their handlers share. The data port does not use this; its
//! upgrade is parsed inside the workers.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use tiny_http::{Header, Request, Response, Server};

/// A running tiny_http listener and its threads.
pub struct Service {
    server: Arc<Server>,
    threads: Vec<JoinHandle<()>>,
    pub addr: SocketAddr,
}

/// Why an HTTP service could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for the {what}: {message}")]
pub struct BindError {
    pub what: &'static str,
    pub addr: SocketAddr,
    pub message: String,
}

impl Service {
    /// Binds `addr` and serves it with `threads` threads calling `handle`.
    pub fn start<H>(
        what: &'static str,
        addr: SocketAddr,
        threads: usize,
        handle: H,
    ) -> Result<Service, BindError>
    where
        H: Fn(Request) + Send + Sync + 'static,
    {
        let bind_err = |message: String| BindError {
            what,
            addr,
            message,
        };
        let server = Arc::new(Server::http(addr).map_err(|e| bind_err(e.to_string()))?);
        let bound = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| bind_err("not an IP listener".into()))?;
        let handle = Arc::new(handle);
        let threads = (0..threads)
            .map(|i| {
                let server = server.clone();
                let handle = handle.clone();
                std::thread::Builder::new()
                    .name(format!("surge-{what}-{i}"))
                    .spawn(move || {
                        while let Ok(request) = server.recv() {
                            handle(request);
                        }
                    })
                    .map_err(|e| bind_err(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Service {
            server,
            threads,
            addr: bound,
        })
    }

    /// Stops the listener and joins its threads.
    pub fn stop(self) {
        for _ in &self.threads {
            self.server.unblock();
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Answers `request`; a client that went away is not our problem.
pub fn respond(request: Request, status: u16, content_type: &str, body: String) {
    respond_with(request, status, content_type, body, &[]);
}

/// As [`respond`], with extra headers.
pub fn respond_with(
    request: Request,
    status: u16,
    content_type: &str,
    body: String,
    headers: &[(&str, &str)],
) {
    let mut response = Response::from_string(body).with_status_code(status);
    for (name, value) in std::iter::once(&("Content-Type", content_type)).chain(headers) {
        if let Ok(h) = Header::from_bytes(*name, *value) {
            response.add_header(h);
        }
    }
    if let Err(e) = request.respond(response) {
        tracing::debug!(error = %e, "HTTP client went away before the answer");
    }
}

/// Answers with `{"error": message}`.
pub fn respond_error(request: Request, status: u16, message: &str) {
    respond_error_with(request, status, message, &[]);
}

/// As [`respond_error`], with extra headers.
pub fn respond_error_with(request: Request, status: u16, message: &str, headers: &[(&str, &str)]) {
    let body = serde_json::json!({ "error": message }).to_string();
    respond_with(request, status, "application/json", body, headers);
}

/// Reads a request body of at most `max` bytes; `None` when it is larger.
pub fn read_body(request: &mut Request, max: usize) -> std::io::Result<Option<Vec<u8>>> {
    if request.body_length().is_some_and(|len| len > max) {
        return Ok(None);
    }
    let mut body = Vec::with_capacity(request.body_length().unwrap_or(0).min(max));
    request
        .as_reader()
        .take(max as u64 + 1)
        .read_to_end(&mut body)?;
    Ok((body.len() <= max).then_some(body))
}
