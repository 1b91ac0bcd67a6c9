//! client-sim: behaves like N browsers against a Surge server, so a capacity
//! planner can measure before the surge instead of during it.
//!
//! - `engine`: one worker process's mio loop over simulated browsers.
//! - `orchestrate`: the parent: processes, scenarios, merging.
//! - `publisher`: publishing to one node or several; `confirm`: the
//!   confirm scenario, with a node killed or restarted on the way;
//!   `restart`: draining and restarting nodes, and the drain's profile.
//! - `stats`, `report`: measurements, the table, JSON and HTML.
//! - `plan`: boxes needed, from a report.
//! - `queue`: the waiting-room scenario (tokio-tungstenite browsers).
//! - `srcips`, `sys`: source addresses and the system calls beneath.
//! - `tls`: the TLS client configuration every scenario uses for `wss://`;
//!   `transport`: a plain or TLS socket driven by readiness; `testcert`:
//!   a throwaway CA and server certificate for loopback `wss://` runs;
//!   `tickets`: TLS session tickets shared as browsers would use them.

pub mod confirm;
pub mod engine;
pub mod orchestrate;
pub mod plan;
pub mod publisher;
pub mod queue;
pub mod report;
pub mod restart;
pub mod srcips;
pub mod stats;
pub mod sys;
pub mod testcert;
pub mod tickets;
pub mod tls;
pub mod transport;
