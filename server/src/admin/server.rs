//! The admin HTTP endpoints: `/healthz`, `/metrics`, `/stats`, on the
//! shared HTTP stack with a connection cap of their own, so a flood of the
//! publish or data port never reaches them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::Request;

use crate::admin::metrics::Metrics;
use crate::http::server::BusyCounter;
use crate::http::{answer, Answer, BindError, Service};
use crate::limits::MAX_ADMIN_CONNECTIONS;
use crate::tls::Acceptor;

/// Starts the admin endpoints. `/healthz` answers 503 once `stopping` is set,
/// so a load balancer drains this instance during shutdown, and once a
/// worker has died, so a supervisor replaces it.
pub fn spawn(
    runtime: &tokio::runtime::Handle,
    addr: std::net::SocketAddr,
    metrics: Arc<Metrics>,
    stopping: Arc<AtomicBool>,
    tls: Option<Arc<Acceptor>>,
) -> Result<Service, BindError> {
    fn busy(m: &Metrics) -> &AtomicU64 {
        &m.admin_busy
    }
    let counters: (Arc<Metrics>, BusyCounter) = (metrics.clone(), busy);
    Service::start(
        runtime,
        "admin",
        addr,
        MAX_ADMIN_CONNECTIONS,
        counters,
        move |request| {
            let answer = handle(&metrics, &stopping, tls.as_deref(), &request);
            async move { answer }
        },
    )
}

fn handle(
    metrics: &Metrics,
    stopping: &AtomicBool,
    tls: Option<&Acceptor>,
    request: &Request<Incoming>,
) -> Answer {
    let text = |status, body: &str| answer(status, "text/plain", body.into(), &[]);
    match request.uri().path() {
        // Readiness: a load balancer stops sending new browsers here as
        // soon as a drain begins, while /healthz stays 200 (not dead).
        "/readyz" if metrics.draining.load(Ordering::Relaxed) => text(503, "draining\n"),
        "/readyz" if stopping.load(Ordering::Relaxed) => text(503, "shutting down\n"),
        "/readyz" => match metrics.unhealthy() {
            Some(why) => text(503, &format!("{why}\n")),
            None => text(200, "ready\n"),
        },
        "/drain" if request.method() == hyper::Method::POST => {
            metrics.drain_requested.store(true, Ordering::Relaxed);
            text(202, "drain requested\n")
        }
        "/drain" => answer(405, "text/plain", "use POST\n".into(), &[("Allow", "POST")]),
        // The TLS certificate and key, read again (as on SIGHUP): new
        // handshakes use them; a bad pair is refused and the old one stays.
        "/reload" if request.method() == hyper::Method::POST => match tls.map(Acceptor::reload_logged) {
            Some(Ok(done)) => text(200, &format!("{done}\n")),
            Some(Err(why)) => text(422, &format!("{why}\n")),
            None => text(409, "no TLS configured: nothing to reload\n"),
        },
        "/reload" => answer(405, "text/plain", "use POST\n".into(), &[("Allow", "POST")]),
        "/healthz" if stopping.load(Ordering::Relaxed) => text(503, "shutting down\n"),
        "/healthz" => match metrics.unhealthy() {
            Some(why) => text(503, &format!("{why}\n")),
            None => text(200, "ok\n"),
        },
        "/metrics" => answer(200, "text/plain; version=0.0.4", metrics.prometheus(), &[]),
        "/stats" => answer(200, "application/json", metrics.stats_json(), &[]),
        _ => text(
            404,
            "no such endpoint; try /healthz, /readyz, /metrics, /stats, POST /drain, POST /reload\n",
        ),
    }
}
