//! `POST /api/publish`: one publication, `{"ch":"NAME","data":VALUE}`.
//! Checks the request, encodes the frame once and hands it to the broker;
//! it must not know about workers or connections.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use tiny_http::{Method, Request};

use crate::admin::metrics::Metrics;
use crate::channels::broker::{Broker, Publication};
use crate::channels::name;
use crate::config::Config;
use crate::http::{read_body, respond, respond_error, BindError, Service};

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
    #[error("body over {0} bytes")]
    BodyTooLarge(usize),
    #[error("body is not a publication: {0}")]
    BadJson(String),
    #[error("invalid channel name '{0}'")]
    BadChannel(String),
    #[error("data is {0} bytes, over the {1}-byte limit")]
    DataTooLarge(usize, usize),
    #[error("{0}; retry shortly")]
    Overloaded(String),
    #[error("reading the body failed: {0}")]
    Read(String),
}

impl PublishError {
    fn status(&self) -> u16 {
        match self {
            PublishError::BodyTooLarge(_) => 413,
            PublishError::BadJson(_)
            | PublishError::BadChannel(_)
            | PublishError::DataTooLarge(..) => 400,
            PublishError::Overloaded(_) => 503,
            PublishError::Read(_) => 400,
        }
    }
}

struct Ctx {
    broker: Arc<Broker>,
    metrics: Arc<Metrics>,
    max_body: usize,
    max_data: usize,
}

/// Starts the publish API on `config.publish_listen`.
pub fn spawn(
    config: &Config,
    broker: Arc<Broker>,
    metrics: Arc<Metrics>,
) -> Result<Service, BindError> {
    let ctx = Ctx {
        broker,
        metrics,
        max_body: config.max_publish_body.get(),
        max_data: config.max_publish_data.get(),
    };
    let addr: SocketAddr = config.publish_listen;
    Service::start("publish API", addr, THREADS, move |request| {
        handle(&ctx, request)
    })
}

fn handle(ctx: &Ctx, mut request: Request) {
    if request.url() != "/api/publish" {
        return respond_error(request, 404, "no such endpoint; POST /api/publish");
    }
    if request.method() != &Method::Post {
        return respond_error(request, 405, "use POST");
    }
    ctx.metrics.publish_requests.fetch_add(1, Relaxed);
    match publish(ctx, &mut request) {
        Ok(()) => respond(
            request,
            200,
            "application/json",
            r#"{"ok":true}"#.to_string(),
        ),
        Err(e) => {
            ctx.metrics.publish_rejected.fetch_add(1, Relaxed);
            tracing::debug!(error = %e, "publish refused");
            respond_error(request, e.status(), &e.to_string());
        }
    }
}

fn publish(ctx: &Ctx, request: &mut Request) -> Result<(), PublishError> {
    let body = read_body(request, ctx.max_body)
        .map_err(|e| PublishError::Read(e.to_string()))?
        .ok_or(PublishError::BodyTooLarge(ctx.max_body))?;
    let parsed: PublishBody<'_> =
        serde_json::from_slice(&body).map_err(|e| PublishError::BadJson(e.to_string()))?;
    if !name::is_valid(&parsed.ch) {
        return Err(PublishError::BadChannel(parsed.ch.into_owned()));
    }
    let data = parsed.data.get();
    if data.len() > ctx.max_data {
        return Err(PublishError::DataTooLarge(data.len(), ctx.max_data));
    }
    let publication = Publication::encode(&parsed.ch, data);
    ctx.broker
        .publish(std::slice::from_ref(&publication))
        .map_err(|e| PublishError::Overloaded(e.to_string()))?;
    ctx.metrics.publications.fetch_add(1, Relaxed);
    Ok(())
}
