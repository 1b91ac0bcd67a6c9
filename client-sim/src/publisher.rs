//! Publishing as the booking backend does: to the publish API of one node,
//! or of several. With a shared engine (Redis) any node will do, so
//! requests rotate over the nodes, which also shows that a publication made
//! on one node reaches browsers on the others. Nodes without a shared
//! engine each need every publication (`--publish-each`).
//!
//! It must never send a publication twice to one engine: a request is only
//! tried again elsewhere when the connection was refused, so the node never
//! saw it. Anything else is an error for the caller.

use std::time::Duration;

/// How long one publish request may take; a batch of thousands to a node
/// that is busy fanning out still answers well within it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

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
                Err(Failure::Refused(e) | Failure::Other(e)) => return Err(e),
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
                Err(Failure::Refused(e) | Failure::Other(e)) => return Err(e),
            }
        }
    }

    fn post(&self, url: &str, path: &str, body: &str) -> Result<(), Failure> {
        let mut req = ureq::post(&format!("{url}{path}")).timeout(REQUEST_TIMEOUT);
        if let Some(key) = &self.api_key {
            req = req.set("Authorization", &format!("Bearer {key}"));
        }
        match req.send_string(body) {
            Ok(_) => Ok(()),
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
    /// Anything else: the node may have stored it, so it is not retried.
    Other(String),
}
