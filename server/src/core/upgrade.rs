//! The upgrade on the data port: route, validate, admit under the
//! connection limit, answer 101 and subscribe to `?ch=` channels. Every
//! refusal is an HTTP status from `wire::handshake`, sent before any upgrade.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::channels::name;
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
        let (accept, channels) = match self.check_upgrade(&req) {
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
        for channel in channels {
            self.subscribe_checked(token, &channel, None);
        }
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
    fn check_upgrade(&self, req: &Request<'_>) -> Result<(String, Vec<String>), HandshakeError> {
        let accept = validate_upgrade(req)?;
        if !self.config.origin_allowed(req.origin) {
            return Err(HandshakeError::OriginNotAllowed);
        }
        let mut channels: Vec<String> = Vec::new();
        let mut auth: Option<String> = None;
        for (key, value) in form_urlencoded::parse(req.query.unwrap_or("").as_bytes()) {
            match &*key {
                "token" => auth = Some(value.into_owned()),
                "ch" if !name::is_valid(&value) => {
                    return Err(HandshakeError::BadQuery(format!(
                        "invalid channel name '{value}'"
                    )));
                }
                "ch" if !channels.iter().any(|c| *c == value) => channels.push(value.into_owned()),
                _ => {}
            }
        }
        if channels.len() > self.config.max_subscriptions {
            return Err(HandshakeError::BadQuery(format!(
                "{} channels asked, at most {} allowed",
                channels.len(),
                self.config.max_subscriptions
            )));
        }
        for channel in &channels {
            if let Err(e) = self.check_token(channel, auth.as_deref()) {
                return Err(HandshakeError::Forbidden(format!("{channel}: {e}")));
            }
        }
        Ok((accept, channels))
    }
}
