//! Configuration: every option, its default and why, from flags, `SURGE_*`
//! environment variables and an optional TOML file (in that order of
//! precedence), validated once at start so nonsense never reaches a worker.
//!
//! It must not open sockets or start threads; it only says what was asked.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use serde::{Deserialize, Serialize};

use crate::engine::log::{HistoryConfig, Retention};
use crate::units::{ByteSize, Seconds};

/// Arguments that put all three listeners on ephemeral loopback ports: for
/// tests, benchmarks and measurement programs that start a real server.
pub const EPHEMERAL_LOOPBACK: [&str; 6] = [
    "--listen",
    "127.0.0.1:0",
    "--publish-listen",
    "127.0.0.1:0",
    "--admin-listen",
    "127.0.0.1:0",
];

/// Defined with its siblings in `limits.rs`; named here for older callers.
pub use crate::limits::MAX_REQUEST_HEAD;

/// The push server for booking surges.
///
/// Every option can also be set as an environment variable (`SURGE_` and the
/// option name in capitals, e.g. `SURGE_WORKERS=4`) or in a TOML file given
/// with `--config` (keys as the option names: `ping-interval = "25s"`).
/// Flags beat environment variables, which beat the file, which beats the
/// defaults.
#[derive(Parser, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[command(
    name = "surge",
    version,
    args_override_self = true,
    after_help = "Mint a private channel token for testing:\n  surge token --channel user/8812 --ttl 3600 --secret SECRET"
)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// TOML file with any of the options below.
    #[arg(long, env = "SURGE_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Public WebSocket address; browsers connect to ws://HOST:PORT/ws.
    #[arg(long, env = "SURGE_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// PEM certificate chain (server certificate first) for the public
    /// port. With --tls-key, the port speaks only TLS 1.2 and 1.3:
    /// browsers connect to wss://HOST:PORT/ws and load the page over
    /// https://, with no proxy in front holding buffers per connection.
    /// Re-read on SIGHUP and POST /reload (admin port). See docs/tls.md.
    #[arg(long, env = "SURGE_TLS_CERT")]
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert. A key that
    /// does not match the certificate, or an expired certificate, is
    /// refused at start.
    #[arg(long, env = "SURGE_TLS_KEY")]
    #[serde(default)]
    pub tls_key: Option<PathBuf>,

    /// Publish API address for the booking backend. Loopback by default:
    /// it must never be reachable from browsers.
    #[arg(long, env = "SURGE_PUBLISH_LISTEN", default_value = "127.0.0.1:8081")]
    pub publish_listen: SocketAddr,

    /// Admin address (/healthz, /metrics, /stats), served off the workers
    /// with a connection cap of its own, so it answers while the data and
    /// publish ports are saturated.
    #[arg(long, env = "SURGE_ADMIN_LISTEN", default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,

    /// Worker threads, each with its own epoll and SO_REUSEPORT listener.
    /// Default: one per core.
    #[arg(long, env = "SURGE_WORKERS", default_value_t = default_workers())]
    pub workers: usize,

    /// Listen backlog per worker. A surge opens thousands of sockets per
    /// second; the kernel also caps this at net.core.somaxconn.
    #[arg(long, env = "SURGE_BACKLOG", default_value_t = 4096)]
    pub backlog: u32,

    /// Most connections on the public port, those still in the handshake
    /// included; past it new ones get 503 with Retry-After. 0 means the
    /// open-file limit less a reserve (see `limits::fd_reserve`) for the
    /// listeners, the publish and admin ports and the 503 answer itself, so
    /// those always work and accept never runs out. A larger value is
    /// lowered to that.
    #[arg(long, env = "SURGE_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,

    /// Most connections on the public port from one source address (an
    /// IPv6 address counts by its /64, what one subscriber gets); past it
    /// new ones from there get 503 with Retry-After. 0: no cap. The default
    /// is sized for carrier-grade NAT: mobile carriers put hundreds to
    /// thousands of subscribers behind one public IPv4 address, and in a
    /// surge many of them have the booking page open at once. 4096 lets
    /// such an address in, while one attacking host holds at most 4096
    /// sockets (~30 MB of kernel memory), not the box. Load tests from a
    /// few loopback addresses set it to 0.
    #[arg(long, env = "SURGE_MAX_CONNECTIONS_PER_IP", default_value_t = 4096)]
    pub max_connections_per_ip: usize,

    /// Seconds the client is told to wait in Retry-After when we are full.
    #[arg(long, env = "SURGE_RETRY_AFTER", default_value = "5s")]
    pub retry_after: Seconds,

    /// Time for the whole upgrade request to arrive; a slowloris client that
    /// trickles its head is closed after it.
    #[arg(long, env = "SURGE_HANDSHAKE_TIMEOUT", default_value = "10s")]
    pub handshake_timeout: Seconds,

    /// Server ping interval. 25 s stays under the 60 s idle timeout of common
    /// load balancers and proxies, which would otherwise cut idle sockets.
    #[arg(long, env = "SURGE_PING_INTERVAL", default_value = "25s")]
    pub ping_interval: Seconds,

    /// How long a client has to answer a ping before it is closed (4001).
    /// Must be shorter than the ping interval.
    #[arg(long, env = "SURGE_PONG_TIMEOUT", default_value = "10s")]
    pub pong_timeout: Seconds,

    /// How long a closing connection may take to finish the close handshake.
    #[arg(long, env = "SURGE_CLOSE_TIMEOUT", default_value = "3s")]
    pub close_timeout: Seconds,

    /// Largest inbound message. Browsers only send small JSON commands;
    /// 16 KiB bounds the buffer a hostile client can make us hold (1009 past it).
    #[arg(long, env = "SURGE_MAX_MESSAGE", default_value = "16KiB")]
    pub max_message: ByteSize,

    /// Unsent bytes allowed per connection before it is closed as too slow
    /// (4000). Bounds memory per slow reader; 256 KiB is thousands of slot
    /// updates, far more than a healthy browser ever lags by.
    #[arg(long, env = "SURGE_MAX_OUTBOUND", default_value = "256KiB")]
    pub max_outbound: ByteSize,

    /// Frames (commands, pings, pongs, fragments) a connection may send per
    /// second, after a burst of 128; past it the connection is closed with
    /// 1008. A browser sends a few commands at connect and a pong every
    /// 25 s; 20/s is far above that and still makes a flood of pings or
    /// commands cost the flooder its connection within seconds. 0: no limit.
    #[arg(long, env = "SURGE_MAX_MESSAGE_RATE", default_value_t = 20)]
    pub max_message_rate: u32,

    /// Subscriptions per connection. A slot board needs a clinic and the
    /// user's own channel; 32 leaves room without letting one socket pin
    /// thousands of index entries.
    #[arg(long, env = "SURGE_MAX_SUBSCRIPTIONS", default_value_t = 32)]
    pub max_subscriptions: usize,

    /// Origins whose pages may connect (repeat or comma-separate), e.g.
    /// https://book.example. Empty: only pages from the same origin as the
    /// request's Host, which stops another site's page from opening a
    /// socket with its visitors' cookies (cross-site WebSocket hijacking);
    /// the demo page is same-origin. '*': any origin, explicitly. A request
    /// without Origin is not from a browser and is always allowed.
    #[arg(
        long = "allowed-origin",
        env = "SURGE_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub allowed_origins: Vec<String>,

    /// Largest `data` of one publication: it is copied to every subscriber's
    /// socket buffer, so it is kept small.
    #[arg(long, env = "SURGE_MAX_PUBLISH_DATA", default_value = "64KiB")]
    pub max_publish_data: ByteSize,

    /// Largest publish request body (413 past it).
    #[arg(long, env = "SURGE_MAX_PUBLISH_BODY", default_value = "1MiB")]
    pub max_publish_body: ByteSize,

    /// How long a drain (SIGTERM, or POST /drain on the admin port) keeps
    /// accepting after /readyz turned 503: a load balancer polls readiness
    /// every few seconds and sends new browsers here until it has seen it,
    /// so closing the listener at once would refuse them.
    #[arg(long, env = "SURGE_DRAIN_GRACE", default_value = "5s")]
    pub drain_grace: Seconds,

    /// Over how long a drain closes its connections (1012 with a reconnect
    /// hint), evenly: N browsers reconnect at N/window per second instead
    /// of all at once. 30 s keeps a 1M-connection box at ~33k reconnects
    /// per second across the fleet, within what a surge already brings.
    #[arg(long, env = "SURGE_DRAIN_WINDOW", default_value = "30s")]
    pub drain_window: Seconds,

    /// How long shutdown waits for close handshakes before exiting.
    #[arg(long, env = "SURGE_SHUTDOWN_TIMEOUT", default_value = "5s")]
    pub shutdown_timeout: Seconds,

    /// Publications each channel keeps for recovery. A browser that drops
    /// for a few seconds during a surge misses tens, not hundreds.
    #[arg(long, env = "SURGE_HISTORY_SIZE", default_value_t = 100)]
    pub history_size: usize,

    /// Age after which publications leave a channel's history (its last
    /// value always stays): longer than any reconnect backoff.
    #[arg(long, env = "SURGE_HISTORY_TTL", default_value = "5m")]
    pub history_ttl: Seconds,

    /// Retention for channels under a prefix, as PREFIX=SIZE[,TTL]
    /// (e.g. "user/=20,1h"; repeat or comma-free list). Longest prefix wins.
    #[arg(
        long = "history-rule",
        env = "SURGE_HISTORY_RULES",
        value_delimiter = ';'
    )]
    #[serde(default)]
    pub history_rules: Vec<String>,

    /// Cap on all history together; past it the oldest publications of any
    /// channel go first. Bounds memory whatever the backend publishes.
    #[arg(long, env = "SURGE_HISTORY_MAX_BYTES", default_value = "256MiB")]
    pub history_max_bytes: ByteSize,

    /// Where the in-process engine keeps each channel's epoch, offsets,
    /// history and last value across a planned restart: written when the
    /// server stops gracefully, read when it starts, so reconnecting
    /// browsers recover instead of resyncing. Unset: history lives and dies
    /// with the process. With --redis, Redis keeps it instead.
    #[arg(long, env = "SURGE_STATE_FILE")]
    #[serde(default)]
    pub state_file: Option<PathBuf>,

    /// Redis for many processes and boxes (`redis://HOST:PORT/DB`): every
    /// node then agrees on each channel's epoch, offsets and history, and a
    /// publication on any node reaches subscribers on all of them. Unset:
    /// the in-process engine, with no external service.
    #[arg(long, env = "SURGE_REDIS", hide_env_values = true)]
    #[serde(default)]
    pub redis: Option<String>,

    /// Redis pub/sub connections per process. Channels are spread over them
    /// by name, so one busy channel (a clinic every browser watches) does
    /// not hold up the private channels behind it; four keep the ramp of
    /// subscriptions from queueing behind one connection without costing
    /// Redis many clients per node.
    #[arg(long, env = "SURGE_REDIS_PUBSUB_CONNECTIONS", default_value_t = 4)]
    pub redis_pubsub_connections: usize,

    /// How long Redis keeps a channel nobody publishes to (its history,
    /// last value and epoch). Bounds Redis memory by the channels in use;
    /// a day outlives any booking surge, and a channel forgotten after it
    /// starts a new epoch, so no browser mistakes old offsets for new.
    #[arg(long, env = "SURGE_REDIS_CHANNEL_TTL", default_value = "24h")]
    pub redis_channel_ttl: Seconds,

    /// How long a publish or a channel load waits for Redis before the
    /// publish is refused with 503 (the backend retries) or the browser is
    /// told to retry: long enough for a busy Redis, short enough that
    /// nothing hangs while it is down.
    #[arg(long, env = "SURGE_REDIS_TIMEOUT", default_value = "2s")]
    pub redis_timeout: Seconds,

    /// How long a waiting-room ticket keeps its place while its holder is
    /// away (reload, lost connection, switch of network): a reload takes
    /// seconds and a phone changing networks under a minute, while a place
    /// held by someone long gone delays everyone behind it.
    #[arg(long, env = "SURGE_ROOM_GRACE", default_value = "2m")]
    pub room_grace: Seconds,

    /// How long a waiting-room admission token stays valid when the room
    /// does not say (`admission_ttl`): time to reach the booking page and
    /// start booking. An admission left unused frees its place for
    /// `max_admitted` when it expires.
    #[arg(long, env = "SURGE_ROOM_ADMISSION_TTL", default_value = "10m")]
    pub room_admission_ttl: Seconds,

    /// Channels under this prefix are private: subscribing needs a token
    /// signed with --token-secret. Booking confirmations go there.
    #[arg(long, env = "SURGE_PRIVATE_PREFIX", default_value = "user/")]
    pub private_prefix: String,

    /// Shared secret (16 bytes or more) the booking backend signs private
    /// channel tokens with (HMAC-SHA256). Without it private channels refuse
    /// every subscription.
    #[arg(long, env = "SURGE_TOKEN_SECRET", hide_env_values = true)]
    #[serde(default)]
    pub token_secret: Option<String>,

    /// The secret before the last rotation: tokens it signed are still
    /// accepted (until they expire), new ones are checked against both.
    /// Rotate by moving the old --token-secret here; drop it once the
    /// longest token lifetime has passed.
    #[arg(long, env = "SURGE_TOKEN_SECRET_PREVIOUS", hide_env_values = true)]
    #[serde(default)]
    pub token_secret_previous: Option<String>,

    /// API key the booking backend sends as `Authorization: Bearer KEY` on
    /// every publish request. Without one, --publish-listen must be loopback.
    #[arg(long, env = "SURGE_API_KEY", hide_env_values = true)]
    #[serde(default)]
    pub api_key: Option<String>,

    /// Most publications in one POST /api/batch.
    #[arg(long, env = "SURGE_MAX_BATCH", default_value_t = 10_000)]
    pub max_batch: usize,

    /// Largest /api/batch body (413 past it).
    #[arg(long, env = "SURGE_MAX_BATCH_BODY", default_value = "16MiB")]
    pub max_batch_body: ByteSize,

    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "surge=debug".
    #[arg(long, env = "SURGE_LOG", default_value = "info")]
    pub log: String,

    /// Log line format: "text" for people, "json" (one object per line)
    /// for a log pipeline. Text has no colour codes unless stderr is a
    /// terminal, so journald and files get plain lines.
    #[arg(long, env = "SURGE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Run the demo: a simulated booking backend publishing slot availability
    /// for a few clinics, and the live slot board at http://HOST:PORT/.
    #[arg(long, env = "SURGE_DEMO", default_value_t = false)]
    pub demo: bool,

    /// With --demo: a "sale opens at" waiting room in front of the slot
    /// board, opening this long after start (e.g. 30s). Visitors join,
    /// watch their position fall, are admitted, and book with their
    /// admission, which the demo backend verifies. Off when not given.
    #[arg(long, env = "SURGE_DEMO_SALE_IN")]
    #[serde(default)]
    pub demo_sale_in: Option<Seconds>,

    /// Conformance testing only: echo every message back instead of speaking
    /// the push protocol (used to run the Autobahn|Testsuite).
    #[arg(long, env = "SURGE_ECHO", default_value_t = false)]
    pub echo: bool,

    /// Testing only: messages `surge-test:panic` and `surge-test:kill-worker`
    /// make the server panic in a handler or kill a worker, so tests can
    /// prove a bug is contained. Never set in production.
    #[arg(long, hide = true, default_value_t = false)]
    #[serde(skip)]
    pub test_panic_hooks: bool,
}

/// How log lines are written (`--log-format`).
#[derive(clap::ValueEnum, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where an option's value came from, as `surge print-config` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env,
    File,
    Default,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::Flag => "flag",
            Source::Env => "env",
            Source::File => "file",
            Source::Default => "default",
        }
    }
}

/// Each option's source, keyed by its TOML name (`ping-interval`).
pub type Sources = std::collections::BTreeMap<String, Source>;

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Why a configuration was refused at start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A flag could not be parsed, or --help/--version was asked for.
    #[error(transparent)]
    Cli(#[from] clap::Error),
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl Default for Config {
    fn default() -> Self {
        Config::parse_from(["surge"])
    }
}

impl Config {
    /// Parses flags and environment, merges the TOML file, validates.
    pub fn load() -> Result<Config, ConfigError> {
        Self::load_from(std::env::args_os())
    }

    /// As [`Config::load`], from the given arguments.
    pub fn load_from<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let (config, _) = Self::load_unchecked(args)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses flags and environment and merges the file, without
    /// validating (`surge check-config` wants every problem, not the
    /// first); also says where each option's value came from.
    pub fn load_unchecked<I, T>(args: I) -> Result<(Config, Sources), ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Config::command().try_get_matches_from(args)?;
        let mut config = Config::from_arg_matches(&matches)?;
        let mut from_file = Vec::new();
        if let Some(path) = config.config.clone() {
            (config, from_file) = config.merge_file(&path, &matches)?;
        }
        let mut sources = Sources::new();
        for arg in Config::command().get_arguments() {
            let id = arg.get_id().as_str();
            let key = id.replace('_', "-");
            let source = if from_file.contains(&key) {
                Source::File
            } else {
                match matches.value_source(id) {
                    Some(ValueSource::CommandLine) => Source::Flag,
                    Some(ValueSource::EnvVariable) => Source::Env,
                    _ => Source::Default,
                }
            };
            sources.insert(key, source);
        }
        Ok((config, sources))
    }

    /// Values from the file replace only those still at their default;
    /// returns the merged config and the keys the file supplied.
    fn merge_file(
        self,
        path: &PathBuf,
        matches: &ArgMatches,
    ) -> Result<(Config, Vec<String>), ConfigError> {
        let file_err = |message: String| ConfigError::File {
            path: path.clone(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let file: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| file_err(e.to_string()))?;
        let mut merged = toml::Table::try_from(&self).map_err(|e| file_err(e.to_string()))?;
        let known: Vec<String> = Config::command()
            .get_arguments()
            .filter(|a| a.get_id() != "config")
            .map(|a| a.get_id().as_str().replace('_', "-"))
            .collect();
        let unknown: Vec<String> = file
            .keys()
            .filter(|k| !known.contains(k))
            .map(|k| format!("unknown option '{k}'"))
            .collect();
        if !unknown.is_empty() {
            return Err(file_err(unknown.join("; ")));
        }
        let mut applied = Vec::new();
        for (key, value) in file {
            let id = key.replace('-', "_");
            let from_default = matches!(
                matches.value_source(&id),
                None | Some(ValueSource::DefaultValue)
            );
            if from_default {
                applied.push(key.clone());
                merged.insert(key, value);
            }
        }
        let mut config: Config = merged
            .try_into()
            .map_err(|e: toml::de::Error| file_err(e.to_string()))?;
        config.config = Some(path.clone());
        Ok((config, applied))
    }

    /// Refuses values that cannot work, with a message naming the option;
    /// every problem is named, not only the first.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems.join("; ")))
        }
    }

    /// Every value that cannot work, each with a message naming the option.
    /// Empty when the configuration is usable.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut fail = |msg: String| problems.push(msg);
        if self.workers == 0 || self.workers > 1024 {
            fail(format!("--workers must be 1..=1024, got {}", self.workers));
        }
        if self.backlog == 0 {
            fail("--backlog must be at least 1".into());
        }
        for (name, value) in [
            ("--handshake-timeout", self.handshake_timeout),
            ("--ping-interval", self.ping_interval),
            ("--pong-timeout", self.pong_timeout),
            ("--close-timeout", self.close_timeout),
        ] {
            if value.0 == 0 || value.0 > 24 * 3600 {
                fail(format!("{name} must be between 1s and 24h, got {value}"));
            }
        }
        if self.drain_window.0 == 0 || self.drain_window.0 > 3600 {
            fail(format!(
                "--drain-window must be between 1s and 1h, got {}",
                self.drain_window
            ));
        }
        if self.drain_grace.0 > 600 {
            fail(format!(
                "--drain-grace must be at most 10m, got {}",
                self.drain_grace
            ));
        }
        if self.pong_timeout >= self.ping_interval {
            fail(format!(
                "--pong-timeout ({}) must be shorter than --ping-interval ({})",
                self.pong_timeout, self.ping_interval
            ));
        }
        if self.max_message.0 < 125 || self.max_message.0 > 1 << 30 {
            fail(format!(
                "--max-message must be 125 bytes..1GiB, got {}",
                self.max_message
            ));
        }
        if self.max_outbound.0 < 4096 {
            fail(format!(
                "--max-outbound must be at least 4KiB, got {}",
                self.max_outbound
            ));
        }
        if self.max_subscriptions == 0 || self.max_subscriptions > 4096 {
            fail(format!(
                "--max-subscriptions must be 1..=4096, got {}",
                self.max_subscriptions
            ));
        }
        if self.max_publish_data.0 == 0 || self.max_publish_data > self.max_publish_body {
            fail(format!(
                "--max-publish-data ({}) must be non-zero and at most --max-publish-body ({})",
                self.max_publish_data, self.max_publish_body
            ));
        }
        if self.max_publish_data > self.max_outbound {
            fail(format!(
                "--max-publish-data ({}) above --max-outbound ({}) would close every subscriber as slow",
                self.max_publish_data, self.max_outbound
            ));
        }
        let ports = [self.listen, self.publish_listen, self.admin_listen];
        for (i, a) in ports.iter().enumerate() {
            for b in &ports[i + 1..] {
                if a.port() != 0 && a == b {
                    fail(format!("address {a} is given to two listeners"));
                }
            }
        }
        if self.api_key.is_none() && !self.publish_listen.ip().is_loopback() {
            fail(format!(
                "--publish-listen {} is not loopback: set --api-key (SURGE_API_KEY) so only the booking backend can publish",
                self.publish_listen
            ));
        }
        if self.api_key.as_ref().is_some_and(|k| k.len() < 16) {
            fail("--api-key must be at least 16 characters".into());
        }
        if self.room_admission_ttl.0 == 0
            || self.room_admission_ttl.0 > crate::rooms::MAX_ADMISSION_TTL_S
        {
            fail(format!(
                "--room-admission-ttl must be between 1s and {}s",
                crate::rooms::MAX_ADMISSION_TTL_S
            ));
        }
        if u32::try_from(self.room_grace.0).is_err() {
            fail("--room-grace is too long".into());
        }
        if self.token_secret.as_ref().is_some_and(|k| k.len() < 16) {
            fail("--token-secret must be at least 16 bytes".into());
        }
        if let Some(previous) = &self.token_secret_previous {
            if previous.len() < 16 || self.token_secret.is_none() {
                fail(
                    "--token-secret-previous must be at least 16 bytes, beside a --token-secret"
                        .into(),
                );
            }
        }
        if self.history_size == 0 {
            fail("--history-size must be at least 1 (the last value)".into());
        }
        if self.max_batch == 0 || self.max_batch > 1_000_000 {
            fail(format!(
                "--max-batch must be 1..=1000000, got {}",
                self.max_batch
            ));
        }
        if self.max_batch > crate::channels::broker::WORKER_QUEUE {
            fail(format!(
                "--max-batch {} exceeds the worker queue of {}",
                self.max_batch,
                crate::channels::broker::WORKER_QUEUE
            ));
        }
        if let Err(e) = self.history_config() {
            fail(e.to_string());
        }
        if self.redis.is_some() && self.state_file.is_some() {
            fail(
                "--state-file keeps the in-process engine's history; with --redis, Redis keeps it: give one or the other".into(),
            );
        }
        if let Some(url) = &self.redis {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                fail(format!(
                    "--redis '{url}' must be a redis://HOST:PORT/DB address"
                ));
            }
            if self.redis_pubsub_connections == 0 || self.redis_pubsub_connections > 64 {
                fail(format!(
                    "--redis-pubsub-connections must be 1..=64, got {}",
                    self.redis_pubsub_connections
                ));
            }
            if self.redis_channel_ttl.0 < self.history_ttl.0 {
                fail(format!(
                    "--redis-channel-ttl ({}s) is shorter than --history-ttl ({}s): history would vanish before its age",
                    self.redis_channel_ttl.0, self.history_ttl.0
                ));
            }
            if self.redis_timeout.0 == 0 {
                fail("--redis-timeout must be at least 1s".into());
            }
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                let provider = rustls::crypto::ring::default_provider();
                if let Err(e) = crate::tls::certs::load(cert, key, &provider) {
                    fail(format!("--tls-cert/--tls-key: {e}"));
                }
            }
            (None, None) => {}
            _ => fail("--tls-cert and --tls-key go together".into()),
        }
        for origin in &self.allowed_origins {
            let any = origin == "*";
            if !(any || origin.starts_with("http://") || origin.starts_with("https://")) {
                fail(format!(
                    "--allowed-origin '{origin}' must be '*' or start with http:// or https://"
                ));
            }
        }
        problems
    }

    /// The connection limit in force: the configured one, or derived from
    /// the open-file limit, never more than the descriptors left after the
    /// reserve.
    pub fn effective_max_connections(&self) -> usize {
        let available = crate::core::sys::open_file_limit()
            .saturating_sub(crate::limits::fd_reserve(self.workers))
            .max(1);
        match self.max_connections {
            0 => available,
            n => n.min(available),
        }
    }

    /// History retention, with the per-prefix rules parsed.
    pub fn history_config(&self) -> Result<HistoryConfig, ConfigError> {
        let default = Retention {
            size: self.history_size,
            ttl_secs: self.history_ttl.0,
        };
        let mut rules = Vec::new();
        for rule in &self.history_rules {
            let bad = || {
                ConfigError::Invalid(format!(
                    "--history-rule '{rule}' must be PREFIX=SIZE[,TTL], e.g. user/=20,1h"
                ))
            };
            let (prefix, rest) = rule.split_once('=').ok_or_else(bad)?;
            let (size, ttl) = match rest.split_once(',') {
                Some((size, ttl)) => (size, ttl.parse::<Seconds>().map_err(|_| bad())?.0),
                None => (rest, default.ttl_secs),
            };
            let size: usize = size.trim().parse().map_err(|_| bad())?;
            if prefix.is_empty() || size == 0 {
                return Err(bad());
            }
            rules.push((
                prefix.to_string(),
                Retention {
                    size,
                    ttl_secs: ttl,
                },
            ));
        }
        Ok(HistoryConfig {
            default,
            rules,
            max_bytes: self.history_max_bytes.get(),
        })
    }

    /// Whether `channel` needs a token.
    pub fn is_private(&self, channel: &str) -> bool {
        !self.private_prefix.is_empty() && channel.starts_with(&self.private_prefix)
    }

    /// The key private channel tokens are checked with: the secret, and the
    /// previous one during a rotation. `None` without a secret.
    pub fn token_key(&self) -> Option<crate::channels::token::TokenKey> {
        let key = crate::channels::token::TokenKey::new(self.token_secret.as_ref()?.as_bytes())?;
        match &self.token_secret_previous {
            Some(previous) => key.with_previous(previous.as_bytes()),
            None => Some(key),
        }
    }

    /// Whether a page at `origin` may connect to us, reached as `host`;
    /// the error says why not.
    pub fn check_origin(&self, origin: Option<&str>, host: Option<&str>) -> Result<(), String> {
        let Some(origin) = origin else {
            return Ok(());
        };
        if self.allowed_origins.is_empty() {
            let same = host.is_some_and(|h| same_origin(origin, h));
            return match same {
                true => Ok(()),
                false => Err(format!(
                    "origin {origin} is not this host ({}); the server must list it with --allowed-origin",
                    host.unwrap_or("none")
                )),
            };
        }
        let listed = self
            .allowed_origins
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(origin));
        match listed {
            true => Ok(()),
            false => Err(format!("origin {origin} is not in --allowed-origin")),
        }
    }
}

/// Whether `origin` (scheme://authority) names the same place as the
/// request's `host` header, default ports made explicit on both sides.
fn same_origin(origin: &str, host: &str) -> bool {
    let (authority, default_port) = if let Some(a) = origin.strip_prefix("http://") {
        (a, ":80")
    } else if let Some(a) = origin.strip_prefix("https://") {
        (a, ":443")
    } else {
        return false;
    };
    let with_port = |a: &str| {
        // An IPv6 literal ends in ']' unless a port follows it.
        let has_port = a.rsplit_once(':').is_some_and(|(_, p)| !p.contains(']'));
        if has_port {
            a.to_ascii_lowercase()
        } else {
            format!("{}{default_port}", a.to_ascii_lowercase())
        }
    };
    with_port(authority) == with_port(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_must_match_host_by_default() {
        let c = Config::default();
        assert!(c.check_origin(None, Some("x:8080")).is_ok());
        assert!(c
            .check_origin(Some("http://x:8080"), Some("X:8080"))
            .is_ok());
        assert!(c.check_origin(Some("http://x"), Some("x:80")).is_ok());
        assert!(c.check_origin(Some("https://x"), Some("x")).is_ok());
        assert!(c
            .check_origin(Some("http://[::1]:80"), Some("[::1]"))
            .is_ok());
        assert!(c
            .check_origin(Some("https://evil.example"), Some("x"))
            .is_err());
        assert!(c
            .check_origin(Some("http://x:8081"), Some("x:8080"))
            .is_err());
        assert!(c.check_origin(Some("null"), Some("x")).is_err());
        let any = Config::load_from(["surge", "--allowed-origin", "*"]).unwrap();
        assert!(any
            .check_origin(Some("https://evil.example"), Some("x"))
            .is_ok());
        let list = Config::load_from(["surge", "--allowed-origin", "https://a.example"]).unwrap();
        assert!(list
            .check_origin(Some("https://a.example"), Some("x"))
            .is_ok());
        assert!(list
            .check_origin(Some("https://b.example"), Some("x"))
            .is_err());
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn nonsense_is_refused_with_the_option_named() {
        let bad = |args: &[&str]| {
            let mut all = vec!["surge"];
            all.extend_from_slice(args);
            Config::load_from(all).unwrap_err().to_string()
        };
        assert!(bad(&["--workers", "0"]).contains("--workers"));
        assert!(bad(&["--pong-timeout", "30s"]).contains("--pong-timeout"));
        assert!(bad(&["--max-message", "10"]).contains("--max-message"));
        assert!(bad(&["--allowed-origin", "example.com"]).contains("--allowed-origin"));
        assert!(bad(&["--listen", "127.0.0.1:9090"]).contains("two listeners"));
        assert!(bad(&["--publish-listen", "0.0.0.0:8081"]).contains("--api-key"));
        assert!(bad(&["--history-rule", "user/=lots"]).contains("--history-rule"));
        assert!(bad(&["--token-secret", "short"]).contains("--token-secret"));
        let ok = Config::load_from([
            "surge",
            "--publish-listen",
            "0.0.0.0:8081",
            "--api-key",
            "0123456789abcdef",
        ]);
        assert!(ok.is_ok());
        let c = Config::load_from(["surge", "--history-rule", "user/=20,1h;clinic:=500"]).unwrap();
        let h = c.history_config().unwrap();
        assert_eq!(
            h.rules[0],
            (
                "user/".to_string(),
                Retention {
                    size: 20,
                    ttl_secs: 3600
                }
            )
        );
        assert_eq!(
            h.rules[1].1,
            Retention {
                size: 500,
                ttl_secs: 300
            }
        );
    }

    #[test]
    fn file_fills_defaults_but_flags_win() {
        let dir = std::env::temp_dir().join(format!("surge-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("surge.toml");
        std::fs::write(
            &path,
            "workers = 3\nping-interval = \"40s\"\nmax-message = 32768\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let c = Config::load_from(["surge", "--config", p, "--workers", "2"]).unwrap();
        assert_eq!(
            (c.workers, c.ping_interval, c.max_message),
            (2, Seconds(40), ByteSize(32768))
        );
        std::fs::write(&path, "wokers = 3\n").unwrap();
        let err = Config::load_from(["surge", "--config", p])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown option 'wokers'"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
