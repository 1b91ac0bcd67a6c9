//! The upgrade on the data port: route, validate, admit under the
//! connection limit, answer 101 and hand the `?ch=` subscriptions to the
//! session. Every
//! refusal is an HTTP status from `wire::handshake`, sent before any upgrade.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::channels::session::ConnectQuery;
use crate::config::MAX_REQUEST_HEAD;
use crate::core::conn::{flag, State};
use crate::core::worker::Worker;
use crate::web;
use crate::wire::handshake::{
    parse_request, switching_protocols, validate_upgrade, HandshakeError, Request,
};

impl Worker {
    /// Parses and answers the upgrade. `Some(0)`: the head is incomplete;
    /// `Some(n)`: upgraded, the head took `n` bytes; `None`: refused.
    pub(super) fn handshake(&mut self, token: usize, buf: &[u8]) -> Option<usize> {
        let req = match parse_request(buf, MAX_REQUEST_HEAD) {
            Ok(Some(req)) => req,
            Ok(None) => return Some(0),
            Err(e) => {
                self.refuse(token, e);
                return None;
            }
        };
        if req.path != "/ws" {
            self.plain_http(token, &req);
            return None;
        }
        let (accept, query) = match self.check_upgrade(&req) {
            Ok(ok) => ok,
            Err(e) => {
                self.refuse(token, e);
                return None;
            }
        };
        let open = self
            .metrics
            .open_connections
            .fetch_add(1, Ordering::Relaxed);
        if open >= self.max_connections {
            self.metrics
                .open_connections
                .fetch_sub(1, Ordering::Relaxed);
            self.refuse(token, HandshakeError::AtCapacity);
            return None;
        }
        let conn = self.conns.get_mut(token)?;
        conn.state = State::Open;
        conn.set(flag::COUNTED);
        self.upgraded += 1;
        self.send(token, Bytes::from(switching_protocols(&accept)));
        let at = self.now + self.config.ping_interval.0 as u32;
        self.set_timer(token, at);
        self.subscribe_at_connect(token, query);
        Some(req.head_len)
    }

    /// Anything but `/ws` on the public port: the page and its assets, the
    /// demo endpoints with `--demo`, and 404 for the rest. Each answer closes
    /// the connection: browsers fetch four small files once.
    fn plain_http(&mut self, token: usize, req: &Request<'_>) {
        let head = req.method == "HEAD";
        let answer = if let Some(answer) = web::asset(req.method, req.path, req.if_none_match) {
            answer
        } else if let (Some(demo), "/demo/session", "GET") = (&self.demo, req.path, req.method) {
            web::response(
                200,
                "application/json",
                &[("Cache-Control", "no-store")],
                demo.session_json().as_bytes(),
                head,
            )
        } else if let (Some(demo), "/demo/book", "POST") = (&self.demo, req.path, req.method) {
            match demo.book(req.query.unwrap_or("")) {
                Ok(()) => web::response(
                    202,
                    "application/json",
                    &[],
                    br#"{"status":"pending"}"#,
                    false,
                ),
                Err((status, why)) => web::response(
                    status,
                    "text/plain; charset=utf-8",
                    &[],
                    format!("{why}\n").as_bytes(),
                    false,
                ),
            }
        } else {
            return self.refuse(token, HandshakeError::NotFound);
        };
        self.finish_with(token, Bytes::from(answer));
    }

    /// Route, upgrade headers, origin and `?ch=` subscriptions, all checked
    /// before we answer 101, so a bad request is an HTTP error.
    fn check_upgrade(&self, req: &Request<'_>) -> Result<(String, ConnectQuery), HandshakeError> {
        let accept = validate_upgrade(req)?;
        self.config
            .check_origin(req.origin, req.host)
            .map_err(HandshakeError::OriginNotAllowed)?;
        let query = self.check_connect_query(req.query)?;
        Ok((accept, query))
    }
}
