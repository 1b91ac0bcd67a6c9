//! The HTTP stack beside the data port: the publish API and the admin
//! endpoints, served by hyper on a small tokio runtime of the server's own
//! ([`runtime`]), behind a hardened listener ([`server`]) that no peer can
//! stop or exhaust. Here too: the answers and body reading its handlers
//! share.
//!
//! The data port does not use this; its upgrade is parsed inside the
//! workers. Handlers here must never block a runtime thread: anything that
//! can wait (a publish waiting for room in the worker queues) goes through
//! `spawn_blocking`.

mod body;
mod idle;
pub mod runtime;
pub mod server;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};

pub use body::{read_body, BodyError};
pub use runtime::Runtime;
pub use server::{BindError, Service};

/// What every handler answers with: a whole body in memory.
pub type Answer = Response<Full<Bytes>>;

/// An answer with `status`, `content_type` and `body`, plus extra headers.
/// Invalid header values (never produced by our own code) are left out
/// rather than failing the answer.
pub fn answer(status: u16, content_type: &str, body: String, headers: &[(&str, &str)]) -> Answer {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let out = response.headers_mut();
    for (name, value) in std::iter::once(&("Content-Type", content_type)).chain(headers) {
        let name = hyper::header::HeaderName::from_bytes(name.as_bytes());
        if let (Ok(name), Ok(value)) = (name, HeaderValue::from_str(value)) {
            out.insert(name, value);
        }
    }
    if !out.contains_key(CONTENT_TYPE) {
        out.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    response
}

/// Answers with `{"error": message}`.
pub fn error(status: u16, message: &str, headers: &[(&str, &str)]) -> Answer {
    let body = serde_json::json!({ "error": message }).to_string();
    answer(status, "application/json", body, headers)
}
