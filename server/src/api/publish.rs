//! `POST /api/publish` (one publication, `{"ch":"NAME","data":VALUE}`) and
//! `POST /api/batch` (a JSON array or NDJSON of up to `--max-batch` of them,
//! applied in order). Checks the API key and every item before anything is
//! published, then hands the lot to the engine, which numbers, keeps and
//! spreads them. It must not know about workers or connections.

use std::borrow::Cow;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::{Method, Request};
use serde::Deserialize;
use serde_json::value::RawValue;
use subtle::ConstantTimeEq;

use crate::admin::metrics::Metrics;
use crate::channels::name;
use crate::config::Config;
use crate::engine::{EngineError, Position, SharedEngine};
use crate::http::server::BusyCounter;
use crate::http::{answer, error, read_body, Answer, BindError, BodyError, Service};
use crate::limits::MAX_PUBLISH_CONNECTIONS;
use crate::rooms::Rooms;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody<'a> {
    #[serde(borrow)]
    ch: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// Why a publish request was refused; each maps to one status.
#[derive(Debug, thiserror::Error)]
enum PublishError {
    #[error("missing or wrong API key (send Authorization: Bearer KEY)")]
    Unauthorized,
    #[error("body over {0} bytes")]
    BodyTooLarge(usize),
    #[error("{0}body is not a publication: {1}")]
    BadJson(String, String),
    #[error("{0}invalid channel name '{1}'")]
    BadChannel(String, String),
    #[error("{0}data is {1} bytes, over the {2}-byte limit")]
    DataTooLarge(String, usize, usize),
    #[error("batch of {0} publications, over the limit of {1}")]
    BatchTooLarge(usize, usize),
    #[error("empty batch")]
    EmptyBatch,
    #[error("{0}; retry shortly")]
    Overloaded(String),
    #[error("{0}")]
    Body(#[from] BodyError),
    #[error("the publish failed inside the server")]
    Internal,
}

impl PublishError {
    fn status(&self) -> u16 {
        match self {
            PublishError::Unauthorized => 401,
            PublishError::BodyTooLarge(_) | PublishError::Body(BodyError::TooLarge(_)) => 413,
            PublishError::Body(BodyError::Timeout) => 408,
            PublishError::Overloaded(_) => 503,
            PublishError::Internal => 500,
            _ => 400,
        }
    }
}

struct Ctx {
    engine: SharedEngine,
    metrics: Arc<Metrics>,
    api_key: Option<String>,
    max_body: usize,
    max_batch_body: usize,
    max_data: usize,
    max_batch: usize,
    rooms: Arc<Rooms>,
}

/// Starts the publish API on `config.publish_listen`.
pub fn spawn(
    runtime: &tokio::runtime::Handle,
    config: &Config,
    engine: SharedEngine,
    metrics: Arc<Metrics>,
    rooms: Arc<Rooms>,
) -> Result<Service, BindError> {
    let ctx = Arc::new(Ctx {
        engine,
        metrics: metrics.clone(),
        api_key: config.api_key.clone(),
        max_body: config.max_publish_body.get(),
        max_batch_body: config.max_batch_body.get(),
        max_data: config.max_publish_data.get(),
        max_batch: config.max_batch,
        rooms,
    });
    fn busy(m: &Metrics) -> &AtomicU64 {
        &m.publish_busy
    }
    let counters: (Arc<Metrics>, BusyCounter) = (metrics, busy);
    Service::start(
        runtime,
        "publish API",
        config.publish_listen,
        MAX_PUBLISH_CONNECTIONS,
        counters,
        move |request| handle(ctx.clone(), request),
    )
}

async fn handle(ctx: Arc<Ctx>, request: Request<Incoming>) -> Answer {
    if super::rooms::is_room_path(request.uri().path()) {
        return handle_rooms(ctx, request).await;
    }
    let batch = match request.uri().path() {
        "/api/publish" => false,
        "/api/batch" => true,
        _ => {
            return error(
                404,
                "no such endpoint; POST /api/publish or /api/batch",
                &[],
            )
        }
    };
    if request.method() != Method::POST {
        return error(405, "use POST", &[("Allow", "POST")]);
    }
    ctx.metrics.publish_requests.fetch_add(1, Relaxed);
    // In-process, a drained server's history goes nowhere a browser will
    // look (unless a state file carries it): refuse, so the backend retries
    // on a live node, never acknowledged and then lost.
    if ctx.metrics.draining.load(Relaxed) && ctx.engine.status().kind == "memory" {
        // Read the body first (bounded, as for a publish): a refusal sent
        // while a batch is still arriving ends in a reset, which the
        // backend cannot tell from a node that stored it and then died.
        let max = if batch {
            ctx.max_batch_body
        } else {
            ctx.max_body
        };
        let _ = read_body(request, max).await;
        ctx.metrics.count_publish_refusal(503);
        return error(
            503,
            "draining; publish to another node",
            &[("Retry-After", "1")],
        );
    }
    let result = match authorize(&ctx, &request) {
        Ok(()) => publish(&ctx, request, batch).await,
        Err(e) => Err(e),
    };
    ctx.metrics
        .history_bytes
        .store(ctx.engine.bytes() as u64, Relaxed);
    match result {
        Ok(body) => answer(200, "application/json", body, &[]),
        Err(e) => {
            ctx.metrics.count_publish_refusal(e.status());
            tracing::debug!(error = %e, "publish refused");
            let extra: &[(&str, &str)] = match e {
                PublishError::Unauthorized => &[("WWW-Authenticate", "Bearer")],
                PublishError::Overloaded(_) => &[("Retry-After", "1")],
                _ => &[],
            };
            error(e.status(), &e.to_string(), extra)
        }
    }
}

/// The waiting-room endpoints (`api/rooms.rs`), behind the same key. The
/// rooms' lock may wait out a ticker pass, so the work runs on the blocking
/// pool, as a publish does.
async fn handle_rooms(ctx: Arc<Ctx>, request: Request<Incoming>) -> Answer {
    if authorize(&ctx, &request).is_err() {
        let message = PublishError::Unauthorized.to_string();
        return error(401, &message, &[("WWW-Authenticate", "Bearer")]);
    }
    let method = request.method().as_str().to_string();
    let path = request.uri().path().to_string();
    let body = match read_body(request, super::rooms::MAX_BODY).await {
        Ok(body) => body,
        Err(e) => {
            let e = PublishError::Body(e);
            return error(e.status(), &e.to_string(), &[]);
        }
    };
    let work = move || super::rooms::handle(&ctx.rooms, &method, &path, &body);
    match tokio::task::spawn_blocking(work).await {
        Ok((status, body)) => answer(status, "application/json", body, &[]),
        Err(e) => {
            tracing::error!(error = %e, "a room request failed");
            error(500, "the room request failed inside the server", &[])
        }
    }
}

/// `Authorization: Bearer KEY`, compared in constant time.
fn authorize(ctx: &Ctx, request: &Request<Incoming>) -> Result<(), PublishError> {
    let Some(key) = &ctx.api_key else {
        return Ok(());
    };
    let given = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(key.as_bytes())) {
        Ok(())
    } else {
        Err(PublishError::Unauthorized)
    }
}

/// Parses the body (one publication, or a batch as a JSON array or NDJSON).
fn parse(body: &[u8], batch: bool) -> Result<Vec<PublishBody<'_>>, PublishError> {
    let json_err = |e: serde_json::Error| PublishError::BadJson(String::new(), e.to_string());
    if !batch {
        return Ok(vec![serde_json::from_slice(body).map_err(json_err)?]);
    }
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        return serde_json::from_slice(body).map_err(json_err);
    }
    body.split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, line)| line.iter().any(|b| !b.is_ascii_whitespace()))
        .map(|(i, line)| {
            serde_json::from_slice(line)
                .map_err(|e| PublishError::BadJson(format!("line {}: ", i + 1), e.to_string()))
        })
        .collect()
}

/// Reads the body on the runtime, then parses and publishes on the
/// blocking pool: a batch is CPU work, and the engine may wait up to 2 s
/// for room in the worker queues; neither may hold a runtime thread.
async fn publish(
    ctx: &Arc<Ctx>,
    request: Request<Incoming>,
    batch: bool,
) -> Result<String, PublishError> {
    let max_body = if batch {
        ctx.max_batch_body
    } else {
        ctx.max_body
    };
    let body = read_body(request, max_body).await.map_err(|e| match e {
        BodyError::TooLarge(n) => PublishError::BodyTooLarge(n),
        other => PublishError::Body(other),
    })?;
    let ctx = ctx.clone();
    tokio::task::spawn_blocking(move || apply(&ctx, &body, batch))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "a publish task failed");
            PublishError::Internal
        })?
}

/// Checks every item, then publishes them all, in order.
fn apply(ctx: &Ctx, body: &[u8], batch: bool) -> Result<String, PublishError> {
    let items = parse(body, batch)?;
    if items.is_empty() {
        return Err(PublishError::EmptyBatch);
    }
    if items.len() > ctx.max_batch {
        return Err(PublishError::BatchTooLarge(items.len(), ctx.max_batch));
    }
    let at = |i: usize| {
        if batch {
            format!("item {i}: ")
        } else {
            String::new()
        }
    };
    for (i, item) in items.iter().enumerate() {
        if !name::is_valid(&item.ch) {
            return Err(PublishError::BadChannel(at(i), item.ch.to_string()));
        }
        if item.data.get().len() > ctx.max_data {
            return Err(PublishError::DataTooLarge(
                at(i),
                item.data.get().len(),
                ctx.max_data,
            ));
        }
    }
    let pairs: Vec<(&str, &str)> = items.iter().map(|p| (&*p.ch, p.data.get())).collect();
    let positions = ctx
        .engine
        .publish(&pairs)
        .map_err(|e: EngineError| PublishError::Overloaded(e.to_string()))?;
    ctx.metrics
        .publications
        .fetch_add(positions.len() as u64, Relaxed);
    let answer = |(epoch, off): &Position| format!(r#"{{"off":{off},"epoch":"{epoch}"}}"#);
    if batch {
        let results: Vec<String> = positions.iter().map(answer).collect();
        Ok(format!(r#"{{"results":[{}]}}"#, results.join(",")))
    } else {
        Ok(positions.first().map(answer).unwrap_or_default())
    }
}
