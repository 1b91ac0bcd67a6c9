//! Reading a request body under a size limit and a deadline: the declared
//! `Content-Length` is checked before a byte is read, and a streamed
//! (chunked) body is cut at the limit, so no request makes us buffer more
//! than the limit however it lies about its size.

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_LENGTH;
use hyper::Request;

use crate::limits::HTTP_BODY_TIMEOUT;

/// Why a body could not be read. All end the request, none the server.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Over the limit, declared or streamed (413).
    #[error("body over {0} bytes")]
    TooLarge(usize),
    /// Not all of it arrived within `HTTP_BODY_TIMEOUT` (408).
    #[error("body not received in time")]
    Timeout,
    /// The peer broke off or sent a malformed body (400).
    #[error("reading the body failed: {0}")]
    Read(String),
}

/// Reads the whole body of `request`, at most `max` bytes.
pub async fn read_body(request: Request<Incoming>, max: usize) -> Result<Bytes, BodyError> {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(BodyError::TooLarge(max));
    }
    let limited = Limited::new(request.into_body(), max);
    match tokio::time::timeout(HTTP_BODY_TIMEOUT, limited.collect()).await {
        Err(_) => Err(BodyError::Timeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge(max)),
        Ok(Err(e)) => Err(BodyError::Read(e.to_string())),
    }
}
