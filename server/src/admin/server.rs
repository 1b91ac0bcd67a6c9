//! The admin HTTP endpoints: `/healthz`, `/metrics`, `/stats`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tiny_http::Request;

use crate::admin::metrics::Metrics;
use crate::http::{respond, BindError, Service};

/// One thread: scrapes are rare, and a separate thread from the workers is
/// what keeps them answering under load.
const THREADS: usize = 1;

/// Starts the admin endpoints. `/healthz` answers 503 once `stopping` is set,
/// so a load balancer drains this instance during shutdown.
pub fn spawn(
    addr: std::net::SocketAddr,
    metrics: Arc<Metrics>,
    stopping: Arc<AtomicBool>,
) -> Result<Service, BindError> {
    Service::start("admin", addr, THREADS, move |request| {
        handle(&metrics, &stopping, request)
    })
}

fn handle(metrics: &Metrics, stopping: &AtomicBool, request: Request) {
    let path = request.url().split('?').next().unwrap_or("");
    match path {
        "/healthz" if stopping.load(Ordering::Relaxed) => {
            respond(request, 503, "text/plain", "shutting down\n".into())
        }
        "/healthz" => match metrics.unhealthy() {
            Some(why) => respond(request, 503, "text/plain", format!("{why}\n")),
            None => respond(request, 200, "text/plain", "ok\n".into()),
        },
        "/metrics" => respond(
            request,
            200,
            "text/plain; version=0.0.4",
            metrics.prometheus(),
        ),
        "/stats" => respond(request, 200, "application/json", metrics.stats_json()),
        _ => respond(
            request,
            404,
            "text/plain",
            "no such endpoint; try /healthz, /metrics, /stats\n".into(),
        ),
    }
}
