//! The catalogue of kernel settings Surge cares about: each key, how a live
//! value is judged against a required one, which role needs it, and why.
//! It is also `apply`'s allow-list: nothing outside it is ever written.

/// Who the box is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs `surge`: accepts the connections.
    Server,
    /// Runs `client-sim`: opens them.
    Loadgen,
}

/// How a live value is compared with the required one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Every number at least the required one (higher is fine).
    AtLeast,
    /// At most the required value (lower is fine).
    AtMost,
    /// Exactly the required value.
    Equal,
    /// Three numbers (min default max); the default (middle) at most the
    /// required one: per-socket buffers that stay small at a million sockets.
    DefaultAtMost,
    /// Two numbers (low high); the range at least as wide as required.
    RangeAtLeast,
}

/// One sysctl in the catalogue.
#[derive(Debug)]
pub struct Key {
    pub name: &'static str,
    pub rule: Rule,
    pub server: bool,
    pub loadgen: bool,
    /// Only present when the nf_conntrack module is loaded.
    pub conntrack: bool,
    /// What it protects against at a million sockets.
    pub why: &'static str,
}

const fn key(
    name: &'static str,
    rule: Rule,
    server: bool,
    loadgen: bool,
    why: &'static str,
) -> Key {
    Key {
        name,
        rule,
        server,
        loadgen,
        conntrack: false,
        why,
    }
}

/// Every key, in the order plans and reports list them. `tcp_tw_recycle` is
/// absent on purpose: it was removed in Linux 4.12 and broke NATed clients.
pub const KEYS: &[Key] = &[
    key("fs.file-max", Rule::AtLeast, true, true,
        "system-wide open files; every socket is one, and at the limit accept() fails with ENFILE"),
    key("fs.nr_open", Rule::AtLeast, true, true,
        "ceiling for any process's RLIMIT_NOFILE; LimitNOFILE above it is refused"),
    key("net.core.somaxconn", Rule::AtLeast, true, false,
        "cap on each listener's accept queue; a reconnect storm overflows a short queue and clients see timeouts"),
    key("net.ipv4.tcp_max_syn_backlog", Rule::AtLeast, true, false,
        "half-open connections queued per listener during a storm of SYNs"),
    key("net.core.netdev_max_backlog", Rule::AtLeast, true, true,
        "packets queued per CPU when they arrive faster than the kernel processes them; drops cause retransmits"),
    key("net.ipv4.tcp_mem", Rule::AtLeast, true, true,
        "pages all TCP buffers may use (low, pressure, high); past high the kernel drops data for every socket"),
    key("net.ipv4.tcp_rmem", Rule::DefaultAtMost, true, true,
        "per-socket receive buffer (min default max); a small default keeps a million mostly idle sockets cheap"),
    key("net.ipv4.tcp_wmem", Rule::DefaultAtMost, true, true,
        "per-socket send buffer (min default max); it autotunes up for the few sockets that need it"),
    key("net.core.rmem_default", Rule::AtMost, true, true,
        "receive buffer of non-TCP sockets; kept at the kernel's value so nothing else inflates"),
    key("net.core.wmem_default", Rule::AtMost, true, true,
        "send buffer of non-TCP sockets; kept at the kernel's value so nothing else inflates"),
    Key {
        name: "net.netfilter.nf_conntrack_max",
        rule: Rule::AtLeast,
        server: true,
        loadgen: true,
        conntrack: true,
        why: "connection-tracking entries when conntrack is loaded; a full table silently drops new connections",
    },
    key("net.ipv4.ip_local_port_range", Rule::RangeAtLeast, false, true,
        "ephemeral ports per source address; each outgoing connection to one server address takes one"),
    key("net.ipv4.tcp_tw_reuse", Rule::Equal, false, true,
        "lets outgoing connections reuse ports in TIME_WAIT, so a reconnect storm does not run out of ports"),
    key("net.ipv4.tcp_fin_timeout", Rule::AtMost, true, true,
        "seconds an orphaned socket waits in FIN_WAIT_2; after a mass disconnect they hold memory and ports"),
    key("net.ipv4.tcp_syncookies", Rule::Equal, true, true,
        "answers SYNs with cookies when the backlog is full, so a SYN flood cannot lock real users out"),
];

/// The catalogue entry for `name`.
pub fn find(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

impl Key {
    pub fn applies_to(&self, role: Role) -> bool {
        match role {
            Role::Server => self.server,
            Role::Loadgen => self.loadgen,
        }
    }

    /// The file under `<proc>/sys/` that holds this key.
    pub fn path(&self) -> String {
        format!("sys/{}", self.name.replace('.', "/"))
    }

    /// Whether `current` satisfies `required` under this key's rule.
    pub fn satisfied(&self, current: &[u64], required: &[u64]) -> bool {
        if current.len() != required.len() {
            return false;
        }
        match self.rule {
            Rule::AtLeast => current.iter().zip(required).all(|(c, r)| c >= r),
            Rule::AtMost => current.iter().zip(required).all(|(c, r)| c <= r),
            Rule::Equal => current == required,
            Rule::DefaultAtMost => current.get(1) <= required.get(1),
            Rule::RangeAtLeast => match (current, required) {
                ([clo, chi], [rlo, rhi]) => chi.saturating_sub(*clo) >= rhi.saturating_sub(*rlo),
                _ => false,
            },
        }
    }
}
