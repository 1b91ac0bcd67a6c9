//! One worker process: a mio loop over a slab of simulated browsers.
//!
//! Same style as the server: no thread, task or buffer per idle client; reads
//! land in one scratch buffer; a client holds a buffer only for a partial
//! frame. It ramps connections at a rate, answers pings, checks every
//! publication's offset for gaps and duplicates, and on command drops a
//! share of its connections and reconnects them with a backoff policy,
//! recovering with `since`. It talks to the parent in JSON lines.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use slab::Slab;
use surge::channels::token::{unix_now, TokenKey};
use surge::wire::frame::{decode_header, encode_frame, OpCode, Role};
use surge::wire::handshake::{client_request, parse_response};

use crate::stats::{self, Stats};
use crate::tls::{self as tls_config, TlsArgs};
use crate::transport::{Tls, TlsFailure, Transport};

const WAKER: Token = Token(usize::MAX);
/// A handshake that has not completed in this long has failed.
const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Reconnect backoff: first window and ceiling.
const BACKOFF_BASE_MS: u64 = 250;
const BACKOFF_CAP_MS: u64 = 8_000;
const MAX_ATTEMPTS: u8 = 12;
/// The close code of a server that drains for a restart.
const SERVICE_RESTART: u16 = 1012;

/// How dropped clients come back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// At once, all together, and again at once after a failure.
    None,
    /// All together after the base delay, doubling after each failure.
    Expo,
    /// A uniformly random delay up to the doubling window (AWS "full jitter").
    FullJitter,
}

impl Policy {
    fn delay_ms(self, attempt: u8, rng: &mut SmallRng) -> u64 {
        let window = BACKOFF_BASE_MS
            .saturating_mul(1 << attempt.min(16))
            .min(BACKOFF_CAP_MS);
        match self {
            Policy::None => 0,
            Policy::Expo => window,
            Policy::FullJitter => rng.gen_range(0..=window),
        }
    }
}

/// What the parent tells a worker process to do.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub server: SocketAddr,
    pub host: String,
    pub path: String,
    pub conns: u64,
    pub first_uid: u64,
    /// Connections per second for this process.
    pub rate: f64,
    pub src_ips: Vec<Ipv4Addr>,
    pub clinics: u32,
    pub zipf: f64,
    pub seed: u64,
    pub token_secret: Option<String>,
    /// Prefix of each client's own second channel (`user/`), if any.
    pub own_channel: Option<String>,
    /// A connection the server closes comes back (full jitter) and
    /// recovers with `since`, as a browser does when its node dies.
    #[serde(default)]
    pub reconnect_on_close: bool,
    /// Confirmations each user channel should get (confirm's `--rounds`).
    #[serde(default = "one")]
    pub expect_confirms: u8,
    /// Most first connects in flight at once (0: no cap).
    #[serde(default)]
    pub max_pending: u64,
    /// `wss://`: how to set up TLS; `None` for `ws://`.
    #[serde(default)]
    pub tls: Option<TlsArgs>,
}

fn one() -> u8 {
    1
}

/// Commands from the parent, one per stdin line.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Command {
    Storm { fraction: f64, policy: Policy },
    Report,
    Finish,
}

/// Lines to the parent on stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", content = "data", rename_all = "lowercase")]
pub enum Event {
    Progress {
        connected: u64,
        failed: u64,
        deliveries: u64,
    },
    Ramped {
        connected: u64,
        failed: u64,
        clinic_subscribers: std::collections::BTreeMap<u32, u64>,
    },
    Stormed,
    Report {
        deliveries: u64,
        confirm_once: u64,
        open: u64,
    },
    Result {
        stats: Box<Stats>,
    },
}

pub fn emit(event: &Event) {
    if let Ok(line) = serde_json::to_string(event) {
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Connecting,
    Handshake,
    Open,
    /// Dropped in a storm, waiting for its reconnect timer.
    Waiting,
    Done,
}

/// One simulated browser: 56 bytes while idle (a TLS session is boxed
/// inside the transport).
struct Client {
    socket: Option<Transport>,
    state: State,
    uid: u32,
    clinic: u32,
    /// Last offset seen on (clinic channel, user channel).
    last: [u64; 2],
    /// When the current connect started, in 100 us ticks since the process
    /// started (u32 lasts 119 hours at that resolution).
    started_tick: u32,
    attempt: u8,
    confirms: u8,
    reconnecting: bool,
    /// Bytes of a partial frame. Boxed so an idle client pays 8 bytes for
    /// it, not the 24 of an empty Vec: the whole point of this struct.
    #[allow(clippy::box_collection)]
    buf: Option<Box<Vec<u8>>>,
}

#[derive(Deserialize)]
struct Msg<'a> {
    #[serde(default, borrow)]
    op: Option<&'a str>,
    #[serde(default, borrow)]
    ch: Option<std::borrow::Cow<'a, str>>,
    off: Option<u64>,
    #[serde(default, borrow)]
    epoch: Option<std::borrow::Cow<'a, str>>,
    snap: Option<bool>,
    recovered: Option<bool>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Stamp {
    ts: Option<u64>,
    id: Option<u64>,
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Sec-WebSocket-Key: 16 bytes ("surge client-sim") in base64. A fixed key
/// is fine for a load generator: it proves nothing but the handshake.
const KEY: &str = "c3VyZ2UgY2xpZW50LXNpbQ==";

pub struct Engine {
    spec: WorkerSpec,
    poll: Poll,
    clients: Slab<Client>,
    scratch: Vec<u8>,
    started: Instant,
    rng: SmallRng,
    zipf: Zipf<f64>,
    tokens: Option<TokenKey>,
    next_src: usize,
    opened: u64,
    /// First connects not yet open or failed (the ramp's in-flight handshakes).
    pending: u64,
    stats: Stats,
    connect_hist: hdrhistogram::Histogram<u64>,
    delivery_hist: hdrhistogram::Histogram<u64>,
    epochs: HashMap<String, String>,
    timers: BinaryHeap<Reverse<(u64, usize)>>,
    storm_at: Option<u64>,
    storm_pending: u64,
    last_reconnect_ms: u64,
    policy: Policy,
    rss_at_start: u64,
    /// `wss://`: the configuration every connection's session starts from.
    tls: Option<Tls>,
}

impl Engine {
    pub fn new(spec: WorkerSpec) -> io::Result<Engine> {
        let zipf = Zipf::new(u64::from(spec.clinics.max(1)), spec.zipf.max(0.0))
            .map_err(|e| io::Error::other(format!("zipf: {e}")))?;
        let tokens = spec
            .token_secret
            .as_ref()
            .and_then(|s| TokenKey::new(s.as_bytes()));
        let tls = match &spec.tls {
            Some(args) => Some(Tls {
                configs: tls_config::client_configs(args).map_err(io::Error::other)?,
                name: tls_config::server_name(&spec.host).map_err(io::Error::other)?,
            }),
            None => None,
        };
        Ok(Engine {
            tls,
            rng: SmallRng::seed_from_u64(spec.seed),
            poll: Poll::new()?,
            clients: Slab::with_capacity(spec.conns as usize),
            scratch: vec![0; 64 * 1024],
            started: Instant::now(),
            zipf,
            tokens,
            next_src: 0,
            opened: 0,
            pending: 0,
            stats: Stats::default(),
            connect_hist: stats::histogram(),
            delivery_hist: stats::histogram(),
            epochs: HashMap::new(),
            timers: BinaryHeap::new(),
            storm_at: None,
            storm_pending: 0,
            last_reconnect_ms: 0,
            policy: Policy::FullJitter,
            rss_at_start: crate::sys::process_usage(std::process::id()).map_or(0, |(r, _)| r),
            spec,
        })
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn now_tick(&self) -> u32 {
        u32::try_from(self.started.elapsed().as_micros() / 100).unwrap_or(u32::MAX)
    }

    fn open_count(&self) -> u64 {
        self.clients
            .iter()
            .filter(|(_, c)| c.state == State::Open)
            .count() as u64
    }

    fn failed_total(&self) -> u64 {
        self.stats.failed.values().sum()
    }

    /// Runs until told to finish; commands arrive on `commands`.
    pub fn run(
        mut self,
        commands: crossbeam_channel::Receiver<Command>,
        waker_slot: impl FnOnce(Waker),
    ) -> io::Result<()> {
        waker_slot(Waker::new(self.poll.registry(), WAKER)?);
        let mut events = Events::with_capacity(1024);
        let mut ramped = false;
        let mut last_tick = 0u64;
        loop {
            let now = self.now_ms();
            if !ramped {
                let due = ((now as f64 / 1000.0) * self.spec.rate).ceil() as u64;
                let room = |e: &Engine| e.spec.max_pending == 0 || e.pending < e.spec.max_pending;
                while self.opened < due.min(self.spec.conns) && room(&self) {
                    let uid = (self.spec.first_uid + self.opened) as u32;
                    self.opened += 1;
                    self.pending += 1;
                    self.start_client(uid);
                }
            }
            let timeout = if !ramped {
                5
            } else {
                self.timers
                    .peek()
                    .map_or(100, |Reverse((at, _))| at.saturating_sub(now).min(100))
            };
            if let Err(e) = self
                .poll
                .poll(&mut events, Some(Duration::from_millis(timeout)))
            {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            for event in events.iter() {
                if event.token() == WAKER {
                    continue;
                }
                self.on_event(
                    event.token().0,
                    event.is_readable() || event.is_read_closed() || event.is_error(),
                    event.is_writable(),
                );
            }
            while let Ok(cmd) = commands.try_recv() {
                match cmd {
                    Command::Storm { fraction, policy } => self.storm(fraction, policy),
                    Command::Report => emit(&Event::Report {
                        deliveries: self.stats.deliveries,
                        confirm_once: self
                            .clients
                            .iter()
                            .filter(|(_, c)| c.confirms == self.spec.expect_confirms)
                            .count() as u64,
                        open: self.open_count(),
                    }),
                    Command::Finish => {
                        self.finish();
                        return Ok(());
                    }
                }
            }
            self.fire_timers();
            let now = self.now_ms();
            if now >= last_tick + 250 {
                last_tick = now;
                self.check_timeouts();
                let open = self.open_count();
                if self.stats.timeline.last().map(|(_, v)| *v) != Some(open) {
                    self.stats.timeline.push((now, open));
                }
                if !ramped {
                    emit(&Event::Progress {
                        connected: self.stats.connected,
                        failed: self.failed_total(),
                        deliveries: self.stats.deliveries,
                    });
                }
            }
            // Only once everything is opened is it worth a look for stragglers.
            let ramp_done = !ramped
                && self.opened == self.spec.conns
                && !self
                    .clients
                    .iter()
                    .any(|(_, c)| matches!(c.state, State::Connecting | State::Handshake));
            if ramp_done {
                ramped = true;
                let mut subs = std::collections::BTreeMap::new();
                for (_, c) in self.clients.iter().filter(|(_, c)| c.state == State::Open) {
                    *subs.entry(c.clinic).or_default() += 1;
                }
                self.stats.clinic_subscribers = subs.clone();
                let rss = crate::sys::process_usage(std::process::id()).map_or(0, |(r, _)| r);
                self.stats.client_rss_delta = rss.saturating_sub(self.rss_at_start);
                emit(&Event::Ramped {
                    connected: self.stats.connected,
                    failed: self.failed_total(),
                    clinic_subscribers: subs,
                });
            }
            if self.storm_at.is_some() && self.storm_pending == 0 {
                let at = self.storm_at.take().unwrap_or(0);
                self.stats.storm.time_to_full_ms = self.last_reconnect_ms.saturating_sub(at);
                emit(&Event::Stormed);
            }
        }
    }

    fn start_client(&mut self, uid: u32) {
        let clinic = (self.zipf.sample(&mut self.rng) as u32).saturating_sub(1);
        let client = Client {
            socket: None,
            state: State::Waiting,
            uid,
            clinic,
            last: [0; 2],
            started_tick: 0,
            attempt: 0,
            confirms: 0,
            reconnecting: false,
            buf: None,
        };
        let token = self.clients.insert(client);
        self.stats.attempted += 1;
        self.connect(token);
    }

    fn connect(&mut self, token: usize) {
        let src = if self.spec.src_ips.is_empty() {
            None
        } else {
            self.next_src = (self.next_src + 1) % self.spec.src_ips.len();
            Some(self.spec.src_ips[self.next_src])
        };
        let now = self.now_tick();
        let again = self.clients.get(token).is_some_and(|c| c.reconnecting);
        let result = sys_connect(self.spec.server, src).and_then(|socket| {
            self.poll.registry().register(
                &mut SourceFd(&socket.as_raw_fd()),
                Token(token),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Transport::new(socket, self.tls.as_ref(), again)
        });
        let Some(client) = self.clients.get_mut(token) else {
            return;
        };
        match result {
            Ok(socket) => {
                client.socket = Some(socket);
                client.state = State::Connecting;
                client.started_tick = now;
            }
            Err(e) => self.fail(token, &format!("connect: {}", e.kind())),
        }
    }

    fn on_event(&mut self, token: usize, readable: bool, writable: bool) {
        let Some(client) = self.clients.get_mut(token) else {
            return;
        };
        if client.state != State::Connecting && writable {
            if let Some(socket) = client.socket.as_mut() {
                // TLS records the socket would not take earlier.
                if socket.flush().is_err() {
                    return self.closed_by_server(token, 1006, None);
                }
            }
        }
        if client.state == State::Connecting && (writable || readable) {
            let Some(socket) = &mut client.socket else {
                return;
            };
            match socket.tcp().take_error() {
                Ok(None) if socket.tcp().peer_addr().is_ok() => {}
                Ok(None) if !readable => return,
                _ => return self.fail(token, "connect refused"),
            }
            let mut query = format!("{}?ch=clinic:{}", self.spec.path, client.clinic);
            if let (Some(key), false) = (&self.tokens, client.reconnecting) {
                let ch = format!("user/{}", client.uid);
                query.push_str(&format!(
                    "&ch={ch}&token={}",
                    key.mint(&ch, unix_now() + 86_400)
                ));
            }
            if client.reconnecting {
                query = self.spec.path.clone();
            }
            let request = client_request(&self.spec.host, &query, KEY);
            client.state = State::Handshake;
            // Over TLS, rustls holds the request until its handshake is done.
            if socket.write_all(&request).is_err() {
                return self.fail(token, "write failed");
            }
        }
        if readable {
            self.on_readable(token);
        }
    }

    fn on_readable(&mut self, token: usize) {
        let mut scratch = std::mem::take(&mut self.scratch);
        while let Some(socket) = self.clients.get_mut(token).and_then(|c| c.socket.as_mut()) {
            match socket.read(&mut scratch) {
                Ok(0) => {
                    self.closed_by_server(token, 1006, None);
                    break;
                }
                Ok(n) => {
                    let held = self.clients.get_mut(token).and_then(|c| c.buf.take());
                    let mut pending = held.map(|b| *b).unwrap_or_default();
                    pending.extend_from_slice(&scratch[..n]);
                    let used = self.consume(token, &mut pending);
                    if let Some(client) = self.clients.get_mut(token) {
                        if used < pending.len() && client.socket.is_some() {
                            pending.drain(..used);
                            client.buf = Some(Box::new(pending));
                        }
                    }
                    let more = self
                        .clients
                        .get(token)
                        .and_then(|c| c.socket.as_ref())
                        .is_some_and(Transport::short_read_may_leave_more);
                    if n < scratch.len() && !more {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    match e.get_ref().and_then(|e| e.downcast_ref::<TlsFailure>()) {
                        // A refused certificate, say: counted by its reason.
                        Some(failure) if self.is_opening(token) => {
                            self.fail(token, &failure.to_string())
                        }
                        _ => self.closed_by_server(token, 1006, None),
                    }
                    break;
                }
            }
        }
        self.scratch = scratch;
    }

    /// Handles the upgrade answer and whole frames in `buf`; returns bytes used.
    fn consume(&mut self, token: usize, buf: &mut [u8]) -> usize {
        let mut pos = 0;
        if self
            .clients
            .get(token)
            .is_some_and(|c| c.state == State::Handshake)
        {
            let response = match parse_response(buf, KEY) {
                Ok(Some(r)) => r,
                Ok(None) => return 0,
                Err(_) => {
                    self.fail(token, "bad HTTP answer");
                    return buf.len();
                }
            };
            if response.status == 503 {
                self.stats.storm.refused_503 +=
                    u64::from(self.clients.get(token).is_some_and(|c| c.reconnecting));
                self.fail(token, "http 503");
                return buf.len();
            }
            if !response.accepted {
                self.fail(token, &format!("http {}", response.status));
                return buf.len();
            }
            self.on_open(token);
            pos = response.head_len;
        }
        while pos < buf.len() {
            let Ok(Some(h)) = decode_header(&buf[pos..], Role::Client) else {
                break;
            };
            let end = pos + h.header_len + h.payload_len as usize;
            if end > buf.len() {
                break;
            }
            let payload = &buf[pos + h.header_len..end];
            pos = end;
            match h.opcode {
                OpCode::Text => self.on_message(token, payload),
                OpCode::Ping => self.send(token, OpCode::Pong, payload),
                OpCode::Close => {
                    let code = if payload.len() >= 2 {
                        u16::from_be_bytes([payload[0], payload[1]])
                    } else {
                        1005
                    };
                    // A drain's 1012 says when to come back ("reconnect in 2s").
                    let hint = std::str::from_utf8(payload.get(2..).unwrap_or_default())
                        .ok()
                        .and_then(surge::ops::drain::reconnect_hint)
                        .filter(|_| code == SERVICE_RESTART);
                    self.send(token, OpCode::Close, &payload[..payload.len().min(2)]);
                    self.closed_by_server(token, code, hint);
                    return buf.len();
                }
                _ => {}
            }
        }
        pos
    }

    fn is_opening(&self, token: usize) -> bool {
        self.clients
            .get(token)
            .is_some_and(|c| matches!(c.state, State::Connecting | State::Handshake))
    }

    fn on_open(&mut self, token: usize) {
        let now = self.now_ms();
        let tick = self.now_tick();
        let Some(client) = self.clients.get_mut(token) else {
            return;
        };
        client.state = State::Open;
        match client.socket.as_ref().and_then(Transport::resumed) {
            Some(true) => self.stats.tls_resumed += 1,
            Some(false) => self.stats.tls_full += 1,
            None => {}
        }
        let elapsed_us = u64::from(tick.saturating_sub(client.started_tick)) * 100;
        if client.reconnecting {
            self.stats.storm.reconnected += 1;
            *self
                .stats
                .reconnects_at
                .entry(unix_us() / 100_000)
                .or_default() += 1;
            self.storm_pending = self.storm_pending.saturating_sub(1);
            self.last_reconnect_ms = now;
            client.reconnecting = false;
            // Resubscribe from where we were: recovery fills the gap.
            let (clinic, uid, last) = (client.clinic, client.uid, client.last);
            let mut channels = vec![(format!("clinic:{clinic}"), last[0], None)];
            if let Some(prefix) = &self.spec.own_channel {
                let ch = format!("{prefix}{uid}");
                let grant = self
                    .tokens
                    .as_ref()
                    .map(|key| key.mint(&ch, unix_now() + 86_400));
                channels.push((ch, last[1], grant));
            }
            for (ch, off, grant) in channels {
                let epoch = self.epochs.get(&ch).cloned().unwrap_or_default();
                let mut cmd =
                    serde_json::json!({"op":"sub","ch":ch,"since":{"epoch":epoch,"off":off}});
                if let Some(grant) = grant {
                    cmd["token"] = serde_json::json!(grant);
                }
                self.send(token, OpCode::Text, cmd.to_string().as_bytes());
            }
        } else {
            self.stats.connected += 1;
            self.pending = self.pending.saturating_sub(1);
            let _ = self.connect_hist.record(elapsed_us.max(1));
        }
    }

    fn on_message(&mut self, token: usize, payload: &[u8]) {
        let Ok(msg) = serde_json::from_slice::<Msg<'_>>(payload) else {
            self.stats.errors += 1;
            return;
        };
        match msg.op {
            Some("subscribed") => {
                if let (Some(ch), Some(epoch)) = (&msg.ch, &msg.epoch) {
                    self.epochs
                        .entry(ch.to_string())
                        .or_insert_with(|| epoch.to_string());
                }
                match msg.recovered {
                    Some(true) => self.stats.storm.recovered += 1,
                    Some(false) => self.stats.storm.not_recovered += 1,
                    None => {}
                }
                return;
            }
            Some(_) => {
                self.stats.errors += 1;
                return;
            }
            None => {}
        }
        let (Some(ch), Some(off)) = (msg.ch, msg.off) else {
            return;
        };
        if let Some(epoch) = &msg.epoch {
            if self.epochs.get(ch.as_ref()).map(String::as_str) != Some(epoch.as_ref()) {
                self.epochs.insert(ch.to_string(), epoch.to_string());
            }
        }
        let Some(client) = self.clients.get_mut(token) else {
            return;
        };
        let idx = usize::from(!ch.starts_with("clinic:"));
        let last = client.last[idx];
        if msg.snap == Some(true) {
            client.last[idx] = off;
            self.stats.snapshots += 1;
            return;
        }
        if last != 0 && off <= last {
            self.stats.duplicates += 1;
            return;
        }
        if last != 0 && off > last + 1 {
            self.stats.gaps += off - last - 1;
        }
        client.last[idx] = off;
        if idx == 1 {
            client.confirms = client.confirms.saturating_add(1);
        }
        self.stats.deliveries += 1;
        if let Some(stamp) = msg
            .data
            .and_then(|d| serde_json::from_str::<Stamp>(d.get()).ok())
        {
            let now = unix_us();
            if let Some(ts) = stamp.ts {
                let _ = self.delivery_hist.record(now.saturating_sub(ts).max(1));
            }
            if let Some(id) = stamp.id {
                let e = self.stats.last_receive_us.entry(id).or_default();
                *e = (*e).max(now);
            }
        }
    }

    fn send(&mut self, token: usize, opcode: OpCode, payload: &[u8]) {
        let mask: [u8; 4] = self.rng.gen();
        let Some(socket) = self.clients.get_mut(token).and_then(|c| c.socket.as_mut()) else {
            return;
        };
        let mut frame = Vec::with_capacity(payload.len() + 14);
        encode_frame(&mut frame, opcode, payload, Some(mask));
        // Control frames and commands are tiny; a full socket buffer here
        // means the server is not reading, and the connection will close.
        let _ = socket.write_all(&frame);
    }

    fn drop_socket(&mut self, token: usize) {
        if let Some(client) = self.clients.get_mut(token) {
            if let Some(socket) = client.socket.take() {
                let _ = self
                    .poll
                    .registry()
                    .deregister(&mut SourceFd(&socket.tcp().as_raw_fd()));
            }
            client.buf = None;
        }
    }

    /// A connect or upgrade failed: count it, or retry a storm reconnect.
    fn fail(&mut self, token: usize, reason: &str) {
        self.drop_socket(token);
        let now = self.now_ms();
        let Some(client) = self.clients.get_mut(token) else {
            return;
        };
        if client.reconnecting {
            client.attempt += 1;
            if client.attempt >= MAX_ATTEMPTS {
                client.state = State::Done;
                self.stats.storm.gave_up += 1;
                self.storm_pending = self.storm_pending.saturating_sub(1);
            } else {
                client.state = State::Waiting;
                let policy = self.policy;
                let at = now + policy.delay_ms(client.attempt, &mut self.rng);
                self.timers.push(Reverse((at, token)));
            }
            return;
        }
        client.state = State::Done;
        self.pending = self.pending.saturating_sub(1);
        *self.stats.failed.entry(reason.to_string()).or_default() += 1;
    }

    /// The server closed (or the connection broke); `hint` is the reconnect
    /// delay a drain's 1012 asked for.
    fn closed_by_server(&mut self, token: usize, code: u16, hint: Option<Duration>) {
        self.drop_socket(token);
        let now = self.now_ms();
        if let Some(client) = self.clients.get_mut(token) {
            if client.state == State::Open {
                *self.stats.closes.entry(code).or_default() += 1;
                if code == SERVICE_RESTART {
                    *self
                        .stats
                        .drain_closes_at
                        .entry(unix_us() / 100_000)
                        .or_default() += 1;
                }
                if self.spec.reconnect_on_close {
                    // Its node is gone: come back like a browser, through the
                    // shared port to whichever node takes it, after a jittered
                    // delay so the survivors are not hit all at once; after a
                    // drain's hint plus up to as much again, as surge.js does.
                    client.state = State::Waiting;
                    client.reconnecting = true;
                    client.attempt = 0;
                    self.stats.storm.dropped += 1;
                    self.storm_pending += 1;
                    self.storm_at.get_or_insert(now);
                    let delay = match hint {
                        Some(hint) => {
                            let ms = hint.as_millis() as u64;
                            ms + self.rng.gen_range(0..=ms)
                        }
                        None => Policy::FullJitter.delay_ms(0, &mut self.rng),
                    };
                    let at = now + delay;
                    self.timers.push(Reverse((at, token)));
                    return;
                }
            }
            if client.state == State::Handshake {
                return self.fail(token, "closed during handshake");
            }
            client.state = State::Done;
        }
    }

    fn check_timeouts(&mut self) {
        let now = self.now_ms();
        let late: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| matches!(c.state, State::Connecting | State::Handshake))
            .filter(|(_, c)| {
                now.saturating_sub(u64::from(c.started_tick) / 10) > HANDSHAKE_TIMEOUT_MS
            })
            .map(|(t, _)| t)
            .collect();
        for token in late {
            self.fail(token, "handshake timeout");
        }
    }

    fn storm(&mut self, fraction: f64, policy: Policy) {
        self.policy = policy;
        let open: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| c.state == State::Open)
            .map(|(t, _)| t)
            .collect();
        let count = ((open.len() as f64) * fraction.clamp(0.0, 1.0)).round() as usize;
        let now = self.now_ms();
        for &token in &open[..count] {
            self.drop_socket(token);
            if let Some(client) = self.clients.get_mut(token) {
                client.state = State::Waiting;
                client.reconnecting = true;
                client.attempt = 0;
                let at = now + policy.delay_ms(0, &mut self.rng);
                self.timers.push(Reverse((at, token)));
            }
        }
        self.stats.storm.dropped += count as u64;
        self.storm_pending = count as u64;
        self.storm_at = Some(now);
        self.last_reconnect_ms = now;
    }

    fn fire_timers(&mut self) {
        let now = self.now_ms();
        while let Some(&Reverse((at, token))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if self
                .clients
                .get(token)
                .is_some_and(|c| c.state == State::Waiting)
            {
                self.connect(token);
            }
        }
    }

    fn finish(&mut self) {
        let want = self.spec.expect_confirms;
        for (_, c) in self.clients.iter() {
            match c.confirms.cmp(&want) {
                std::cmp::Ordering::Less => {
                    self.stats.confirm_missing += 1;
                    self.stats.confirm_lost += u64::from(want - c.confirms);
                }
                std::cmp::Ordering::Equal => self.stats.confirm_once += 1,
                std::cmp::Ordering::Greater => self.stats.confirm_duplicate += 1,
            }
            self.stats.confirm_received += u64::from(c.confirms);
        }
        self.stats.connect_us = stats::encode(&self.connect_hist);
        self.stats.delivery_us = stats::encode(&self.delivery_hist);
        emit(&Event::Result {
            stats: Box::new(std::mem::take(&mut self.stats)),
        });
    }
}

fn sys_connect(to: SocketAddr, from: Option<Ipv4Addr>) -> io::Result<std::net::TcpStream> {
    crate::sys::start_connect(to, from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_client_stays_small_with_tls_boxed_away() {
        // 18,000 per process: every 8 bytes here is 144 KB of client-sim.
        assert!(std::mem::size_of::<Client>() <= 56);
    }
}
