//! A whole Surge server: binds the public, publish and admin listeners,
//! starts the workers and the HTTP services, and shuts them down in order.
//! Used by `main` and, unchanged, by the integration tests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::admin;
use crate::admin::metrics::Metrics;
use crate::api;
use crate::channels::broker::Broker;
use crate::channels::token::TokenKey;
use crate::config::Config;
use crate::core::sys;
use crate::core::worker::{Worker, WorkerContext, WAKER};
use crate::demo::{self, DemoBackend};
use crate::engine::log::{random_u64, Clock};
use crate::engine::memory::MemoryEngine;
use crate::engine::redis::{RedisEngine, RedisSettings};
use crate::engine::SharedEngine;
use crate::http::{BindError, Runtime, Service};
use crate::ops::reload::Plan as ReloadPlan;
use crate::rooms::ticker::Ticker;
use crate::rooms::{Defaults, Rooms};
use crate::tls::Acceptor;

/// Why the server could not start. All are fatal at start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} for WebSocket clients: {source}")]
    Public {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Http(#[from] BindError),
    #[error("{0}")]
    Config(String),
    #[error("cannot start worker {id}: {source}")]
    Worker { id: usize, source: std::io::Error },
}

/// A running server.
pub struct Server {
    pub public_addr: SocketAddr,
    pub publish_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    /// The configuration in force (after any SIGHUP reload).
    config: Arc<Config>,
    broker: Arc<Broker>,
    engine: SharedEngine,
    workers: Vec<JoinHandle<()>>,
    publish: Service,
    admin: Service,
    runtime: Runtime,
    demo: Option<DemoBackend>,
    rooms: Ticker,
    stopping: Arc<AtomicBool>,
    /// The public port's TLS, when configured: reloaded on SIGHUP.
    tls: Option<Arc<Acceptor>>,
}

impl Server {
    /// Binds every listener and starts every thread. Port 0 picks a free port;
    /// the chosen addresses are in the returned struct.
    pub fn start(mut config: Config) -> Result<Server, StartError> {
        sys::pin_mmap_threshold();
        if config.demo && config.token_secret.is_none() {
            // The demo signs its visitors' private channel tokens; a secret
            // made up per run is as good as any for that.
            let a = random_u64();
            let b = random_u64();
            config.token_secret = Some(format!("{a:016x}{b:016x}"));
        }
        let config = Arc::new(config);
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(Arc::new(
                Acceptor::new(cert, key).map_err(|e| StartError::Config(e.to_string()))?,
            )),
            _ => None,
        };
        let public = |source| StartError::Public {
            addr: config.listen,
            source,
        };
        let listeners = sys::reuseport_listeners(config.listen, config.workers, config.backlog)
            .map_err(public)?;
        let public_addr = listeners[0].local_addr().map_err(public)?;
        let max_connections = config.effective_max_connections();
        let metrics = Arc::new(Metrics::new(config.workers, max_connections));

        let mut polls = Vec::with_capacity(config.workers);
        let mut wakers = Vec::with_capacity(config.workers);
        for id in 0..config.workers {
            let worker_err = |source| StartError::Worker { id, source };
            let poll = mio::Poll::new().map_err(worker_err)?;
            let waker = mio::Waker::new(poll.registry(), WAKER).map_err(worker_err)?;
            polls.push(poll);
            wakers.push(Arc::new(waker));
        }
        let (broker, inboxes) = Broker::new(wakers);
        let broker = Arc::new(broker);
        let history_config = config
            .history_config()
            .map_err(|e| StartError::Config(e.to_string()))?;
        let engine: SharedEngine = match &config.redis {
            None => Arc::new(MemoryEngine::with_clock(
                history_config,
                broker.clone(),
                Clock::real(),
                config.state_file.clone(),
            )),
            Some(url) => {
                let settings = RedisSettings {
                    url: url.clone(),
                    pubsub_connections: config.redis_pubsub_connections,
                    channel_ttl: config.redis_channel_ttl.duration(),
                    timeout: config.redis_timeout.duration(),
                };
                let engine = RedisEngine::start(settings, history_config, broker.clone())
                    .map_err(|e| StartError::Config(e.to_string()))?;
                Arc::new(engine)
            }
        };
        let _ = metrics.engine.set(engine.clone());
        if let Some(tls) = &tls {
            let _ = metrics.tls.set(tls.clone());
        }

        let (demo_front, demo_bookings) = match config.token_secret.as_ref().filter(|_| config.demo)
        {
            Some(secret) => {
                let key = TokenKey::new(secret.as_bytes())
                    .ok_or_else(|| StartError::Config("unusable token secret".into()))?;
                let (front, rx) = demo::front(key, config.demo_sale_in.is_some());
                (Some(front), Some(rx))
            }
            None => (None, None),
        };
        let room_key = config
            .token_secret
            .as_ref()
            .and_then(|s| TokenKey::new(s.as_bytes()));
        let room_defaults = Defaults {
            grace_s: u32::try_from(config.room_grace.0).unwrap_or(u32::MAX),
            admission_ttl_s: config.room_admission_ttl.0,
        };
        let rooms = Arc::new(Rooms::new(room_key, room_defaults, Some(broker.clone())));
        let _ = metrics.rooms.set(rooms.clone());
        let ticker = Ticker::spawn(rooms.clone()).map_err(|source| StartError::Worker {
            id: usize::MAX,
            source,
        })?;
        let ctx = WorkerContext {
            config: config.clone(),
            metrics: metrics.clone(),
            engine: engine.clone(),
            demo: demo_front,
            addresses: Default::default(),
            rooms: rooms.clone(),
            tls: tls.as_ref().map(|t| t.config()),
        };
        let mut workers = Vec::with_capacity(config.workers);
        for (id, ((poll, listener), inbox)) in
            polls.into_iter().zip(listeners).zip(inboxes).enumerate()
        {
            let worker_err = |source| StartError::Worker { id, source };
            let worker = Worker::new(id, poll, listener, inbox, ctx.clone()).map_err(worker_err)?;
            let handle = std::thread::Builder::new()
                .name(format!("surge-worker-{id}"))
                .spawn(move || worker.run())
                .map_err(worker_err)?;
            workers.push(handle);
        }

        let stopping = Arc::new(AtomicBool::new(false));
        let runtime = Runtime::start().map_err(|source| StartError::Worker {
            id: usize::MAX,
            source,
        })?;
        let handle = runtime.handle();
        let publish = api::spawn(&handle, &config, engine.clone(), metrics.clone(), rooms)?;
        let admin = admin::spawn(
            &handle,
            config.admin_listen,
            metrics.clone(),
            stopping.clone(),
            tls.clone(),
        )?;
        let demo = match demo_bookings {
            Some(rx) => Some(
                demo::start_backend(
                    rx,
                    publish.addr,
                    config.api_key.clone(),
                    config.demo_sale_in.map(|s| s.0),
                )
                .map_err(|source| StartError::Worker {
                    id: usize::MAX,
                    source,
                })?,
            ),
            None => None,
        };
        tracing::info!(
            public = %public_addr,
            publish = %publish.addr,
            admin = %admin.addr,
            workers = config.workers,
            max_connections,
            echo = config.echo,
            tls = tls.is_some(),
            engine = if config.redis.is_some() { "redis" } else { "memory" },
            "surge started"
        );
        Ok(Server {
            public_addr,
            publish_addr: publish.addr,
            admin_addr: admin.addr,
            metrics,
            config,
            broker,
            engine,
            workers,
            publish,
            admin,
            runtime,
            demo,
            rooms: ticker,
            stopping,
            tls,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.clone()
    }

    /// Whether the public port speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Re-reads the TLS certificate and key (SIGHUP): new handshakes use
    /// them, open connections keep theirs; a bad pair is refused, logged,
    /// and the one in use stays. `None` without TLS.
    pub fn reload_tls(&self) -> Option<Result<String, String>> {
        self.tls.as_ref().map(|tls| tls.reload_logged())
    }

    /// The broker, for the drain's commands to the workers (`ops::drain`).
    pub fn broker(&self) -> Arc<Broker> {
        self.broker.clone()
    }

    /// Applies what a running server can take of `wanted` (see
    /// `ops::reload`); returns what changed, or the problems that kept
    /// anything from changing.
    pub fn reload(&mut self, mut wanted: Config) -> Result<ReloadPlan, Vec<String>> {
        if wanted.demo && wanted.token_secret.is_none() {
            // The secret the demo made up at start, not a change.
            wanted.token_secret = self.config.token_secret.clone();
        }
        let plan = crate::ops::reload::plan(&self.config, &wanted)?;
        if !plan.applied.is_empty() {
            self.config = Arc::new(plan.effective.clone());
            self.broker.send_reload(&self.config);
        }
        Ok(plan)
    }

    /// Graceful shutdown: stop accepting, close every connection with 1001,
    /// wait for the workers (each bounded by the shutdown timeout), then stop
    /// the publish and admin services.
    pub fn shutdown(self) {
        self.stopping.store(true, Ordering::Relaxed);
        if let Some(demo) = self.demo {
            demo.stop();
        }
        self.rooms.stop();
        self.engine.shutdown();
        self.broker.shutdown();
        for worker in self.workers {
            if worker.join().is_err() {
                tracing::error!("a worker thread panicked");
            }
        }
        self.publish.stop();
        self.admin.stop();
        self.runtime.stop();
        tracing::info!("surge stopped");
    }
}
