//! The baseline: the Surge protocol subset (subscribe at connect with
//! `?ch=`, publications as `{"ch":..,"off":..,"epoch":..,"data":..}`,
//! `POST /api/publish`) built the way a competent Rust developer would
//! build it first: tokio with a task per connection, tokio-tungstenite with
//! its default settings, and a `tokio::sync::broadcast` channel per channel
//! name. Nothing is crippled; it is the design Surge is measured against.
//!
//! With `--tls-cert FILE --tls-key FILE` (after the two addresses) it
//! serves `wss://` through tokio-rustls the way that developer would add
//! it: the same ring provider, TLS 1.2 and 1.3, ALPN `http/1.1`, stateless
//! session tickets, and the same work after the handshake.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::BroadcastStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::Message;

/// Messages a subscriber may lag behind before it skips ahead.
const CAPACITY: usize = 4096;
const EPOCH: &str = "baseline";

/// A channel's broadcast sender and its last offset.
type Channel = (broadcast::Sender<Arc<str>>, u64);

#[derive(Default)]
struct Hub {
    channels: Mutex<HashMap<String, Channel>>,
}

impl Hub {
    fn subscribe(&self, ch: &str) -> broadcast::Receiver<Arc<str>> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(ch.to_string())
            .or_insert_with(|| (broadcast::channel(CAPACITY).0, 0))
            .0
            .subscribe()
    }

    fn publish(&self, ch: &str, data: &str) -> u64 {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map
            .entry(ch.to_string())
            .or_insert_with(|| (broadcast::channel(CAPACITY).0, 0));
        entry.1 += 1;
        let text: Arc<str> = Arc::from(format!(
            r#"{{"ch":"{ch}","off":{},"epoch":"{EPOCH}","data":{data}}}"#,
            entry.1
        ));
        let _ = entry.0.send(text);
        entry.1
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(stream: S, hub: Arc<Hub>) {
    let mut channels = Vec::new();
    // The callback's signature is tungstenite's; its error type is what it is.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != "/ws" {
            let mut not_found = ErrorResponse::new(Some("not found".into()));
            *not_found.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::NOT_FOUND;
            return Err(not_found);
        }
        for pair in req.uri().query().unwrap_or("").split('&') {
            if let Some(ch) = pair.strip_prefix("ch=") {
                channels.push(ch.replace("%3A", ":").replace("%2F", "/"));
            }
        }
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    let (mut sink, mut source) = ws.split();
    let mut live = futures_util::stream::select_all(
        channels
            .iter()
            .map(|ch| BroadcastStream::new(hub.subscribe(ch))),
    );
    for ch in &channels {
        if sink
            .send(Message::Text(format!(
                r#"{{"op":"subscribed","ch":"{ch}"}}"#
            )))
            .await
            .is_err()
        {
            return;
        }
    }
    loop {
        tokio::select! {
            incoming = source.next() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                // tungstenite answers pings itself on the next write or flush.
                Some(Ok(_)) => { let _ = sink.flush().await; }
            },
            Some(item) = live.next(), if !channels.is_empty() => {
                if let Ok(text) = item {
                    if sink.send(Message::Text(text.to_string())).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

#[derive(Deserialize)]
struct Publish<'a> {
    ch: String,
    #[serde(borrow)]
    data: &'a RawValue,
}

fn publish_api(addr: SocketAddr, hub: Arc<Hub>) -> std::io::Result<SocketAddr> {
    let server = tiny_http::Server::http(addr).map_err(std::io::Error::other)?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| std::io::Error::other("not IP"))?;
    std::thread::spawn(move || {
        for mut req in server.incoming_requests() {
            let mut body = String::new();
            let _ = req.as_reader().read_to_string(&mut body);
            let answer = match serde_json::from_str::<Publish<'_>>(&body) {
                Ok(p) if req.url() == "/api/publish" => {
                    let off = hub.publish(&p.ch, p.data.get());
                    tiny_http::Response::from_string(format!(
                        r#"{{"off":{off},"epoch":"{EPOCH}"}}"#
                    ))
                }
                _ => tiny_http::Response::from_string("bad request").with_status_code(400),
            };
            let _ = req.respond(answer);
        }
    });
    Ok(bound)
}

/// The `wss://` configuration from a PEM certificate chain and key.
fn tls_config(cert: &PathBuf, key: &PathBuf) -> std::io::Result<Arc<ServerConfig>> {
    let bad = |what: &PathBuf, e: &dyn std::fmt::Display| {
        std::io::Error::other(format!("{}: {e}", what.display()))
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad(cert, &e))?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| bad(cert, &e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Stateless tickets, as Surge uses: a reconnect storm resumes without a
    // server-side session cache to outgrow.
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(std::io::Error::other)?;
    Ok(Arc::new(config))
}

/// `--tls-cert FILE --tls-key FILE` among `args`, if both are there.
fn tls_files(args: &[String]) -> Option<(PathBuf, PathBuf)> {
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from)
    };
    Some((value("--tls-cert")?, value("--tls-key")?))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = |i: usize| {
        args.get(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
    };
    let (listen, publish) = (addr(0), addr(1));
    let tls = match tls_files(&args) {
        Some((cert, key)) => Some(TlsAcceptor::from(tls_config(&cert, &key)?)),
        None => None,
    };
    let hub = Arc::new(Hub::default());
    let listener = TcpListener::bind(listen).await?;
    let publish = publish_api(publish, hub.clone())?;
    // Same first line as surge, so the benchmark drives either the same way.
    println!(
        "baseline listening: {}://{}/ws publish=http://{publish}/api/publish admin=none",
        if tls.is_some() { "wss" } else { "ws" },
        listener.local_addr()?
    );
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(_) => continue,
        };
        let _ = stream.set_nodelay(true);
        let hub = hub.clone();
        match &tls {
            None => {
                tokio::spawn(serve(stream, hub));
            }
            Some(acceptor) => {
                let accept = acceptor.accept(stream);
                tokio::spawn(async move {
                    if let Ok(stream) = accept.await {
                        serve(stream, hub).await;
                    }
                });
            }
        }
    }
}
