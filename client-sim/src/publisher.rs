//! Publishing as the booking backend does: to the publish API of one node,
//! or of several. With a shared engine (Redis) any node will do, so
//! requests rotate over the nodes, which also shows that a publication made
//! on one node reaches browsers on the others. Nodes without a shared
//! engine each need every publication (`--publish-each`).
//!
//! It must never send a publication twice to one engine: a request is only
//! tried again elsewhere when the connection was refused, so the node never
//! saw it. Anything else is an error for the caller. While nodes restart
//! (`send_until_accepted`), a 503 is tried again too: Surge answers it
//! before storing anything (draining, overloaded), and a refused node
//! stays in the rotation, for it comes back.

use std::time::{Duration, Instant};

/// How long one publish request may take; a batch of thousands to a node
/// that is busy fanning out still answers well within it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause before asking every node again once all refused: a restarting
/// node is back within a second or two, and asking faster only adds
/// refusals to count.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// The publish APIs of the nodes and how to use them.
pub struct Publisher {
    urls: Vec<String>,
    each: bool,
    next: usize,
    api_key: Option<String>,
}

impl Publisher {
    /// `urls` are base URLs (`http://127.0.0.1:8081`); `each`: send every
    /// publication to every node instead of to one in turn.
    pub fn new(urls: &[String], each: bool, api_key: Option<String>) -> Result<Publisher, String> {
        let urls: Vec<String> = urls
            .iter()
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            return Err("--publish needs at least one URL".into());
        }
        Ok(Publisher {
            urls,
            each,
            next: 0,
            api_key,
        })
    }

    /// Publishes `items` (JSON objects with `ch` and `data`) in one request
    /// (`/api/batch`) when `batch`, else one request each (`/api/publish`).
    pub fn send(&mut self, items: &[String], batch: bool) -> Result<(), String> {
        let bodies: Vec<(String, &str)> = if batch {
            vec![(format!("[{}]", items.join(",")), "/api/batch")]
        } else {
            items.iter().map(|i| (i.clone(), "/api/publish")).collect()
        };
        for (body, path) in &bodies {
            if self.each {
                self.post_to_each(path, body)?;
            } else {
                self.post_to_one(path, body)?;
            }
        }
        Ok(())
    }

    /// Sends to every node; a node that refuses the connection (it is
    /// gone) leaves the list, as long as one is left.
    fn post_to_each(&mut self, path: &str, body: &str) -> Result<(), String> {
        let mut i = 0;
        while i < self.urls.len() {
            match self.post(&self.urls[i], path, body) {
                Ok(()) => i += 1,
                Err(Failure::Refused(e)) if self.urls.len() > 1 => {
                    eprintln!("client-sim: {e}; publishing to the other nodes");
                    self.urls.remove(i);
                }
                Err(Failure::Refused(e) | Failure::Unavailable(e) | Failure::Other(e)) => {
                    return Err(e)
                }
            }
        }
        Ok(())
    }

    /// Sends to the next node in turn; a node that refuses the connection
    /// (it is gone) leaves the rotation and the next one is tried.
    fn post_to_one(&mut self, path: &str, body: &str) -> Result<(), String> {
        loop {
            let i = self.next % self.urls.len();
            let url = self.urls[i].clone();
            match self.post(&url, path, body) {
                Ok(()) => {
                    self.next = i + 1;
                    return Ok(());
                }
                Err(Failure::Refused(e)) if self.urls.len() > 1 => {
                    eprintln!("client-sim: {e}; publishing to the other nodes");
                    self.urls.remove(i);
                }
                Err(Failure::Refused(e) | Failure::Unavailable(e) | Failure::Other(e)) => {
                    return Err(e)
                }
            }
        }
    }

    /// Publishes `items` as `send` does, to one node in turn, while nodes
    /// restart: a node that refuses the connection or answers 503 never
    /// stored the request, so the next node is asked, and once every node
    /// refused, all again after `RETRY_PAUSE`, until `until`. Returns how
    /// many times a request was refused.
    pub fn send_until_accepted(
        &mut self,
        items: &[String],
        batch: bool,
        until: Instant,
    ) -> Result<u64, String> {
        let bodies: Vec<(String, &str)> = if batch {
            vec![(format!("[{}]", items.join(",")), "/api/batch")]
        } else {
            items.iter().map(|i| (i.clone(), "/api/publish")).collect()
        };
        let mut refusals = 0;
        for (body, path) in &bodies {
            let mut refused_in_turn = 0;
            loop {
                let i = self.next % self.urls.len();
                self.next = i + 1;
                match self.post(&self.urls[i], path, body) {
                    Ok(()) => break,
                    Err(Failure::Refused(e) | Failure::Unavailable(e)) => {
                        refusals += 1;
                        refused_in_turn += 1;
                        if Instant::now() >= until {
                            return Err(format!("{e}; still refused at the deadline"));
                        }
                        if refused_in_turn % self.urls.len() == 0 {
                            std::thread::sleep(RETRY_PAUSE);
                        }
                    }
                    Err(Failure::Other(e)) => return Err(e),
                }
            }
        }
        Ok(refusals)
    }

    fn post(&self, url: &str, path: &str, body: &str) -> Result<(), Failure> {
        let mut req = ureq::post(&format!("{url}{path}")).timeout(REQUEST_TIMEOUT);
        if let Some(key) = &self.api_key {
            req = req.set("Authorization", &format!("Bearer {key}"));
        }
        match req.send_string(body) {
            Ok(_) => Ok(()),
            Err(ureq::Error::Status(503, r)) => Err(Failure::Unavailable(format!(
                "publish: 503 {}",
                r.into_string().unwrap_or_default().trim()
            ))),
            Err(ureq::Error::Transport(t)) if t.kind() == ureq::ErrorKind::ConnectionFailed => {
                Err(Failure::Refused(format!("publish: {t}")))
            }
            Err(e) => Err(Failure::Other(format!("publish: {e}"))),
        }
    }
}

/// Why a request failed.
enum Failure {
    /// The connection was refused: the node never saw the publication, so
    /// another node may take it.
    Refused(String),
    /// 503: Surge answers it before storing anything (draining, a full
    /// queue), so asking again cannot duplicate.
    Unavailable(String),
    /// Anything else: the node may have stored it, so it is not retried.
    Other(String),
}
