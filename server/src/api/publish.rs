//! `POST /api/publish` (one publication, `{"ch":"NAME","data":VALUE}`) and
//! `POST /api/batch` (a JSON array or NDJSON of up to `--max-batch` of them,
//! applied in order). Checks the API key and every item before anything is
//! published, then hands the lot to the engine, which numbers, keeps and
//! spreads them. It must not know about workers or connections.

use std::borrow::Cow;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use subtle::ConstantTimeEq;
use tiny_http::{Method, Request};

use crate::admin::metrics::Metrics;
use crate::channels::name;
use crate::config::Config;
use crate::engine::{EngineError, Position, SharedEngine};
use crate::http::{read_body, respond, respond_error_with, BindError, Service};

/// Threads serving the publish API: a backend publishes from a few
/// connections; each request is short work.
const THREADS: usize = 4;

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
    #[error("reading the body failed: {0}")]
    Read(String),
}

impl PublishError {
    fn status(&self) -> u16 {
        match self {
            PublishError::Unauthorized => 401,
            PublishError::BodyTooLarge(_) => 413,
            PublishError::Overloaded(_) => 503,
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
}

/// Starts the publish API on `config.publish_listen`.
pub fn spawn(
    config: &Config,
    engine: SharedEngine,
    metrics: Arc<Metrics>,
) -> Result<Service, BindError> {
    let ctx = Ctx {
        engine,
        metrics,
        api_key: config.api_key.clone(),
        max_body: config.max_publish_body.get(),
        max_batch_body: config.max_batch_body.get(),
        max_data: config.max_publish_data.get(),
        max_batch: config.max_batch,
    };
    Service::start(
        "publish API",
        config.publish_listen,
        THREADS,
        move |request| handle(&ctx, request),
    )
}

fn handle(ctx: &Ctx, mut request: Request) {
    let batch = match request.url() {
        "/api/publish" => false,
        "/api/batch" => true,
        _ => {
            return respond_error_with(
                request,
                404,
                "no such endpoint; POST /api/publish or /api/batch",
                &[],
            )
        }
    };
    if request.method() != &Method::Post {
        return respond_error_with(request, 405, "use POST", &[("Allow", "POST")]);
    }
    ctx.metrics.publish_requests.fetch_add(1, Relaxed);
    let result = authorize(ctx, &request).and_then(|()| publish(ctx, &mut request, batch));
    ctx.metrics
        .history_bytes
        .store(ctx.engine.bytes() as u64, Relaxed);
    match result {
        Ok(body) => respond(request, 200, "application/json", body),
        Err(e) => {
            ctx.metrics.count_publish_refusal(e.status());
            tracing::debug!(error = %e, "publish refused");
            let challenge: &[(&str, &str)] = if matches!(e, PublishError::Unauthorized) {
                &[("WWW-Authenticate", "Bearer")]
            } else {
                &[]
            };
            respond_error_with(request, e.status(), &e.to_string(), challenge);
        }
    }
}

/// `Authorization: Bearer KEY`, compared in constant time.
fn authorize(ctx: &Ctx, request: &Request) -> Result<(), PublishError> {
    let Some(key) = &ctx.api_key else {
        return Ok(());
    };
    let given = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .and_then(|h| h.value.as_str().strip_prefix("Bearer "))
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

fn publish(ctx: &Ctx, request: &mut Request, batch: bool) -> Result<String, PublishError> {
    let max_body = if batch {
        ctx.max_batch_body
    } else {
        ctx.max_body
    };
    let body = read_body(request, max_body)
        .map_err(|e| PublishError::Read(e.to_string()))?
        .ok_or(PublishError::BodyTooLarge(max_body))?;
    let items = parse(&body, batch)?;
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
