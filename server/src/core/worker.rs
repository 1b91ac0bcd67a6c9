//! One worker thread: its epoll, listener, slab of connections, channel index
//! and timer wheel, and the loop that drives them. Accepting, timers,
//! commands from the broker and fan-out live here; the read and write paths
//! are in `read.rs` and `write.rs`.
//!
//! Nothing here may block or panic on anything a peer sends: a bad peer costs
//! its own connection and nothing else.

use std::io::{self, IoSlice};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::admin::metrics::{Metrics, WorkerMetrics};
use crate::channels::broker::{Command, Inbox, Publication};
use crate::channels::expiry::Expiries;
use crate::channels::index::ChannelIndex;
use crate::channels::token::TokenKey;
use crate::config::Config;
use crate::core::addresses::AddressCounts;
use crate::core::conn::{flag, Conn, State};
use crate::core::cork::Cork;
use crate::core::sys;
use crate::core::timer::TimerWheel;
use crate::core::tls::deliver;
use crate::core::write::{write_or_queue, SendError};
use crate::demo::DemoFront;
use crate::engine::SharedEngine;
use crate::rooms::Rooms;
use crate::tls::session::WorkerTls;
use crate::wire::close;
use crate::wire::frame::{encode_frame, OpCode};
use crate::wire::handshake::HandshakeError;

pub const LISTENER: Token = Token(usize::MAX - 1);
pub const WAKER: Token = Token(usize::MAX);

/// Reads per readiness event before the connection goes to the back of the
/// line: with edge-triggered epoll a flooding client would otherwise keep the
/// worker to itself.
pub(crate) const MAX_READS_PER_EVENT: usize = 16;
/// Accepts per readiness event, for the same reason.
pub(crate) const MAX_ACCEPTS_PER_EVENT: usize = 256;
/// Per-worker read buffer. One per worker, not per connection: a million
/// idle sockets own no read buffer at all.
pub(crate) const SCRATCH_LEN: usize = 64 * 1024;
/// Most connections a worker's slab reserves up front (48 MB of address
/// space at 48 bytes each); past it the slab grows as needed.
const MAX_SLAB_RESERVE: usize = 1 << 20;
/// Publications fanned out together at most: a burst is written to each
/// subscriber in one `writev` of up to this many frames (IOV_MAX is 1024).
const MAX_FAN_OUT_BATCH: usize = 256;
/// Events taken from epoll per wait.
const EVENTS: usize = 1024;

/// What every worker shares with the rest of the server.
#[derive(Clone)]
pub struct WorkerContext {
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub engine: SharedEngine,
    /// Set with `--demo`: answers `/demo/session` and `/demo/book`.
    pub demo: Option<Arc<DemoFront>>,
    /// Connections per source address, across workers.
    pub addresses: Arc<AddressCounts>,
    pub rooms: Arc<Rooms>,
    /// Set with `--tls-cert`/`--tls-key`: every connection speaks TLS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

pub struct Worker {
    pub(crate) id: usize,
    pub(crate) poll: Poll,
    pub(crate) listener: Option<TcpListener>,
    pub(crate) conns: Slab<Conn>,
    pub(crate) index: ChannelIndex,
    pub(crate) wheel: TimerWheel,
    pub(crate) inbox: Inbox,
    pub(crate) config: Arc<Config>,
    pub(crate) max_connections: usize,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) engine: SharedEngine,
    pub(crate) demo: Option<Arc<DemoFront>>,
    pub(crate) tokens: Option<TokenKey>,
    pub(crate) rooms: Arc<Rooms>,
    /// Sequence number of the last publication dequeued: history entries up
    /// to it will not come through the queue again (see `engine/log.rs`).
    pub(crate) passed_seq: u64,
    /// Seconds since `epoch`: the worker's clock for the timer wheel.
    pub(crate) now: u32,
    epoch: Instant,
    /// Taken out while a read is in progress (see `read.rs`).
    pub(crate) scratch: Vec<u8>,
    /// Connections (and the listener) that still had input when their turn ended.
    pub(crate) rearm: Vec<Token>,
    /// Upgraded connections on this worker (those with `flag::COUNTED`),
    /// kept as a count so the gauge never walks the slab.
    pub(crate) upgraded: usize,
    /// What an upgrade sends, gathered for one write (see `cork.rs`).
    pub(crate) cork: Cork,
    /// Set when accept ran out of descriptors; retried on the next tick.
    pub(crate) accept_paused: bool,
    /// Connections per source address, across workers.
    pub(crate) addresses: Arc<AddressCounts>,
    /// Refused connections held to deliver their 503 (`flag::SHED`).
    pub(crate) shedding: usize,
    /// A descriptor kept to give up when accept runs out (see `accept.rs`).
    pub(crate) spare: Option<std::fs::File>,
    /// Set by a test hook (see `guard.rs`): the loop dies after this turn.
    pub(crate) kill_requested: bool,
    /// When this worker's private subscriptions end (see `channels/expiry.rs`).
    pub(crate) expiries: Expiries,
    /// The worker second expiries were last checked in: once a second is enough.
    expiries_checked: u32,
    /// Generation given to the last accepted connection (`Conn::lease_gen`).
    pub(crate) lease_gen: u16,
    /// When shutting down: the second at which we stop waiting.
    shutdown_at: Option<u32>,
    /// The TLS sessions of this worker's connections, when the public port
    /// speaks TLS (`core/tls.rs`); `None` costs a plain worker nothing.
    pub(crate) tls: Option<Box<WorkerTls>>,
}

impl Worker {
    pub fn new(
        id: usize,
        poll: Poll,
        mut listener: TcpListener,
        inbox: Inbox,
        ctx: WorkerContext,
    ) -> io::Result<Worker> {
        let WorkerContext {
            config,
            metrics,
            engine,
            demo,
            addresses,
            rooms,
            tls,
        } = ctx;
        let start_seq = engine.start_seq();
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let max_connections = config.effective_max_connections();
        let tokens = config.token_key();
        // Reserve the slab for this worker's share of the limit once: the
        // pages are mapped but untouched until used, so this costs address
        // space, not RSS, and growing by doubling would leave each old
        // buffer resident in the allocator's heap.
        let share = (max_connections / config.workers.max(1)).saturating_mul(5) / 4;
        Ok(Worker {
            id,
            poll,
            listener: Some(listener),
            conns: Slab::with_capacity(share.min(MAX_SLAB_RESERVE)),
            index: ChannelIndex::default(),
            wheel: TimerWheel::new(0),
            inbox,
            config,
            max_connections,
            metrics,
            engine,
            demo,
            tokens,
            rooms,
            passed_seq: start_seq,
            now: 0,
            epoch: Instant::now(),
            scratch: vec![0; SCRATCH_LEN],
            rearm: Vec::new(),
            upgraded: 0,
            cork: Cork::default(),
            accept_paused: false,
            addresses,
            shedding: 0,
            spare: sys::spare_descriptor(),
            kill_requested: false,
            expiries: Expiries::default(),
            expiries_checked: 0,
            lease_gen: 0,
            shutdown_at: None,
            tls: tls.map(|config| Box::new(WorkerTls::new(config))),
        })
    }

    pub(crate) fn stats(&self) -> &WorkerMetrics {
        &self.metrics.workers[self.id]
    }

    /// Runs until shut down and every connection is closed (or the shutdown
    /// timeout passes). A loop that ends any other way (a panic outside a
    /// connection's handling, epoll failing) is a dead worker.
    pub fn run(mut self) {
        let ended = catch_unwind(AssertUnwindSafe(|| self.run_loop()));
        if ended.is_err() || self.shutdown_at.is_none() {
            self.died();
        }
    }

    fn run_loop(&mut self) {
        let mut events = Events::with_capacity(EVENTS);
        loop {
            let timeout = if self.rearm.is_empty() {
                let into_second = self.epoch.elapsed().subsec_millis();
                Some(Duration::from_millis(u64::from(1000 - into_second)))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(worker = self.id, error = %e, "epoll wait failed; worker stops");
                    return;
                }
            }
            self.now = u32::try_from(self.epoch.elapsed().as_secs()).unwrap_or(u32::MAX);
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_ready(),
                    WAKER => self.drain_inbox(),
                    Token(t) => self.guarded(t, |w| {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            w.on_readable(t);
                        }
                        if event.is_writable() {
                            w.on_writable(t);
                        }
                    }),
                }
            }
            for token in std::mem::take(&mut self.rearm) {
                match token {
                    LISTENER => self.accept_ready(),
                    Token(t) => self.guarded(t, |w| w.on_readable(t)),
                }
            }
            if self.kill_requested {
                panic!("test hook: worker {} dies outside any handler", self.id);
            }
            self.fire_timers();
            if self.expiries_checked != self.now {
                self.expiries_checked = self.now;
                self.expire_private_subscriptions();
            }
            self.release_interest();
            let stats = self.stats();
            stats.open.store(self.upgraded as u64, Ordering::Relaxed);
            stats
                .channels
                .store(self.index.len() as u64, Ordering::Relaxed);
            stats
                .heartbeat
                .store(u64::from(self.now), Ordering::Relaxed);
            if let Some(at) = self.shutdown_at {
                if self.conns.is_empty() || self.now >= at {
                    tracing::info!(worker = self.id, left = self.conns.len(), "worker stopped");
                    return;
                }
            }
        }
    }

    fn drain_inbox(&mut self) {
        // Clear before draining: a publish that lands after this point wakes us again.
        self.inbox.notified.store(false, Ordering::Release);
        let mut batch: Vec<Publication> = Vec::new();
        while let Ok(cmd) = self.inbox.rx.try_recv() {
            match cmd {
                Command::Publish(publication) => {
                    batch.push(publication);
                    if batch.len() == MAX_FAN_OUT_BATCH {
                        self.fan_out(&batch);
                        batch.clear();
                    }
                }
                Command::Ready { channel, seq } => {
                    // What came before it in the queue is out first, so the
                    // waiting subscribers' replays meet the live stream.
                    self.fan_out(&batch);
                    batch.clear();
                    self.passed_seq = self.passed_seq.max(seq);
                    self.on_channel_ready(&channel);
                }
                Command::Unavailable { channel } => {
                    self.fan_out(&batch);
                    batch.clear();
                    self.on_channel_unavailable(&channel);
                }
                Command::Room(frames) => self.on_room_frames(frames),
                Command::Shutdown => {
                    self.fan_out(&batch);
                    batch.clear();
                    self.begin_shutdown();
                }
                Command::Reload(config) => self.reload(config),
                Command::StopAccepting => {
                    if let Some(mut listener) = self.listener.take() {
                        let _ = self.poll.registry().deregister(&mut listener);
                    }
                }
                Command::CloseSome { count, reason } => self.close_some(count, &reason),
            }
        }
        self.fan_out(&batch);
    }

    /// Writes a batch of publications to their subscribers on this worker:
    /// grouped by channel (each channel's order kept), each subscriber gets
    /// all of its channel's frames in one `writev`: the same `Bytes` for
    /// everyone, no copy, no encode. Batching matters on a burst: one write
    /// per frame would make every socket readable again and wake its reader
    /// once per frame instead of once.
    fn fan_out(&mut self, batch: &[Publication]) {
        let Some(last) = batch.last() else {
            return;
        };
        let started = Instant::now();
        self.passed_seq = last.seq;
        let mut groups: Vec<(&str, Vec<Bytes>)> = Vec::new();
        for p in batch {
            match groups.iter_mut().find(|(ch, _)| *ch == &*p.channel) {
                Some((_, frames)) => frames.push(p.frame.clone()),
                None => groups.push((&p.channel, vec![p.frame.clone()])),
            }
        }
        let bound = self.config.max_outbound.get();
        let mut failed: Vec<(u32, SendError)> = Vec::new();
        for (name, frames) in &groups {
            let Some(channel) = self.index.get(name) else {
                continue;
            };
            let slices: Vec<IoSlice<'_>> = frames.iter().map(|f| IoSlice::new(f)).collect();
            let failed_before = failed.len();
            let mut written = 0u64;
            for &token in &channel.subscribers {
                let Some(conn) = self.conns.get_mut(token as usize) else {
                    continue;
                };
                let result = match self.tls.as_deref_mut() {
                    None => write_or_queue(conn, frames, &slices, bound),
                    Some(tls) => deliver(conn, tls, token as usize, frames, bound),
                };
                match result {
                    Ok(n) => written += n as u64,
                    Err(e) => failed.push((token, e)),
                }
            }
            let stats = &self.metrics.workers[self.id];
            let delivered = ((channel.subscribers.len() - (failed.len() - failed_before))
                * frames.len()) as u64;
            WorkerMetrics::add(&stats.deliveries, delivered);
            WorkerMetrics::add(&stats.frames_out, delivered);
            WorkerMetrics::add(&stats.bytes_out, written);
        }
        for (token, err) in failed {
            self.on_send_error(token as usize, err);
        }
        if let Some(tls) = self.tls.as_deref_mut() {
            tls.out.trim();
        }
        // Per publication, never per subscriber: the hot loop above pays nothing.
        let done = Instant::now();
        let stats = &self.metrics.workers[self.id];
        stats
            .fan_out
            .observe_n(done.saturating_duration_since(started), batch.len() as u64);
        for p in batch {
            stats
                .publish_latency
                .observe(done.saturating_duration_since(p.published));
        }
    }

    fn begin_shutdown(&mut self) {
        if self.shutdown_at.is_some() {
            return;
        }
        self.shutdown_at = Some(self.now + self.config.shutdown_timeout.0 as u32);
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let tokens: Vec<usize> = self.conns.iter().map(|(t, _)| t).collect();
        for token in tokens {
            match self.conns.get(token).map(|c| c.state) {
                Some(State::Open) => {
                    self.close_with(token, close::GOING_AWAY, "server shutting down")
                }
                Some(State::Handshake) => self.close_now(token),
                _ => {}
            }
        }
    }

    /// A drain step: closes up to `count` open connections with 1012.
    fn close_some(&mut self, count: u64, reason: &str) {
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        let open: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.state == State::Open)
            .map(|(t, _)| t)
            .take(count)
            .collect();
        for token in open {
            self.close_with(token, close::SERVICE_RESTART, reason);
        }
    }

    /// Takes a reloaded configuration: limits, timeouts and origins are read
    /// from it where used; the token key is derived here once.
    fn reload(&mut self, config: Arc<Config>) {
        self.tokens = config.token_key();
        self.config = config;
    }

    /// Tells the engine which channels this worker no longer follows.
    fn release_interest(&mut self) {
        let emptied = self.index.take_emptied();
        if self.engine.wants_interest() {
            for name in &emptied {
                self.engine.interest(self.id, name, false);
            }
        }
    }

    /// Handshake deadlines, pings, pong deadlines and close timeouts.
    fn fire_timers(&mut self) {
        if self.accept_paused {
            self.accept_paused = false;
            self.accept_ready();
        }
        while let Some((second, tokens)) = self.wheel.due(self.now) {
            for &token in &tokens {
                let Some(conn) = self.conns.get_mut(token as usize) else {
                    continue;
                };
                if conn.timer_at != second {
                    // Still due later (it went round the wheel), or a stale
                    // entry of a closed connection whose token was reused.
                    if TimerWheel::later_lap(second, conn.timer_at) {
                        self.wheel.schedule(token, conn.timer_at);
                    }
                    continue;
                }
                self.guarded(token as usize, |w| w.on_timer(token as usize));
            }
            self.wheel.recycle(second, tokens);
        }
    }

    fn on_timer(&mut self, token: usize) {
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        match conn.state {
            State::Handshake => {
                if !self.tls_handshake_timed_out(token) {
                    self.refuse(token, HandshakeError::Timeout);
                }
            }
            State::Closing => self.close_now(token),
            State::Open if conn.has(flag::AWAIT_PONG) => {
                self.close_with(token, close::NO_PONG, "no pong");
            }
            State::Open if conn.has(flag::PING_OUT) => {
                // The pong came back in time; the next ping is due one
                // interval after the last one.
                conn.clear(flag::PING_OUT);
                let sent = self.now.saturating_sub(self.config.pong_timeout.0 as u32);
                self.set_timer(token, sent + self.config.ping_interval.0 as u32);
            }
            State::Open => {
                conn.set(flag::AWAIT_PONG | flag::PING_OUT);
                let mut ping = Vec::with_capacity(2);
                encode_frame(&mut ping, OpCode::Ping, &[], None);
                self.send(token, ping.into());
                self.set_timer(token, self.now + self.config.pong_timeout.0 as u32);
            }
        }
    }

    pub(crate) fn set_timer(&mut self, token: usize, at: u32) {
        if let Some(conn) = self.conns.get_mut(token) {
            conn.timer_at = at;
            self.wheel.schedule(token as u32, at);
        }
    }
}
