//! The browser's session: what its commands do. Subscribe (channel name
//! rules, the token a private channel needs, recovery with `since`, the
//! `?ch=` subscriptions of the connect URL) and unsubscribe, answered in
//! order: the reply first, then the replay or last value, then live frames.
//!
//! `core/read.rs` hands this a whole text message; this asks the engine
//! and writes replies through the worker. It must not parse frames or touch
//! sockets directly.

use crate::admin::metrics::WorkerMetrics;
use crate::channels::index::Waiting;
use crate::channels::name;
use crate::channels::protocol::{self, Command, ErrorCode};
use crate::channels::token::{unix_now, TokenError};
use crate::core::worker::Worker;
use crate::engine::{Recovery, Since};
use crate::wire::frame::{encode_frame, OpCode};
use crate::wire::handshake::HandshakeError;

/// What the connect URL asks for: `?ch=A&ch=B&token=T`.
#[derive(Debug, Default)]
pub struct ConnectQuery {
    pub channels: Vec<String>,
    pub token: Option<String>,
    /// Private channels among them and when their token expires.
    pub expiries: Vec<(String, u64)>,
}

impl Worker {
    /// Checks the connect URL's subscriptions before the upgrade is
    /// answered, so a bad one is an HTTP error rather than a close.
    pub(crate) fn check_connect_query(
        &self,
        query: Option<&str>,
    ) -> Result<ConnectQuery, HandshakeError> {
        let mut out = ConnectQuery::default();
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*key {
                "token" => out.token = Some(value.into_owned()),
                "ch" if !name::is_valid(&value) => {
                    return Err(HandshakeError::BadQuery(format!(
                        "invalid channel name '{value}'"
                    )));
                }
                "ch" if !out.channels.iter().any(|c| *c == value) => {
                    out.channels.push(value.into_owned())
                }
                _ => {}
            }
        }
        if out.channels.len() > self.config.max_subscriptions {
            return Err(HandshakeError::BadQuery(format!(
                "{} channels asked, at most {} allowed",
                out.channels.len(),
                self.config.max_subscriptions
            )));
        }
        for channel in &out.channels {
            match self.check_token(channel, out.token.as_deref()) {
                Ok(Some(expires)) => out.expiries.push((channel.clone(), expires)),
                Ok(None) => {}
                Err(e) => return Err(HandshakeError::Forbidden(format!("{channel}: {e}"))),
            }
        }
        Ok(out)
    }

    /// The connect URL's subscriptions, right after the 101.
    pub(crate) fn subscribe_at_connect(&mut self, token: usize, query: ConnectQuery) {
        for channel in query.channels {
            self.subscribe_checked(token, &channel, None);
        }
        let gen = self.conns.get(token).map_or(0, |c| c.lease_gen);
        for (channel, expires) in query.expiries {
            self.expiries
                .set(token as u32, gen, &channel, expires, false);
        }
    }

    /// One text message from the browser: a JSON command.
    pub(crate) fn on_command(&mut self, token: usize, text: &str) {
        match protocol::parse_command(text) {
            Ok(Command::Sub {
                ch,
                since,
                token: auth,
            }) => {
                let since = since.as_ref().map(|s| Since {
                    epoch: &s.epoch,
                    off: s.off,
                });
                self.subscribe(token, &ch, since, auth.as_deref());
            }
            Ok(Command::Unsub { ch }) => {
                let reply = if name::is_valid(&ch) {
                    let held = self.index.unsubscribe(&mut self.conns, token as u32, &ch);
                    if held && self.config.is_private(&ch) {
                        self.expiries.forget(token as u32, &ch);
                    }
                    protocol::reply("unsubscribed", &ch)
                } else {
                    self.counted_error(Some(&ch), ErrorCode::BadChannel, "invalid channel name")
                };
                self.send_text(token, reply);
            }
            Ok(Command::Refresh { ch, token: auth }) => self.refresh(token, &ch, &auth),
            Ok(Command::Join { room, ticket }) => {
                self.join_room(token, &room, ticket.as_deref());
            }
            Err(reason) => {
                let reply = self.counted_error(None, ErrorCode::BadRequest, &reason);
                self.send_text(token, reply);
            }
        }
    }

    /// A subscribe command: name rules, the token for a private channel,
    /// then the subscription itself.
    fn subscribe(
        &mut self,
        token: usize,
        channel: &str,
        since: Option<Since<'_>>,
        auth: Option<&str>,
    ) {
        if !name::is_valid(channel) {
            let reply =
                self.counted_error(Some(channel), ErrorCode::BadChannel, "invalid channel name");
            return self.send_text(token, reply);
        }
        let expires = match self.check_token(channel, auth) {
            Ok(expires) => expires,
            Err(e) => {
                let reply = self.counted_error(Some(channel), ErrorCode::Forbidden, &e.to_string());
                return self.send_text(token, reply);
            }
        };
        let renewed = expires.is_some() && self.holds(token, channel);
        self.subscribe_checked(token, channel, since);
        if let Some(expires) = expires {
            self.lease(token, channel, expires, renewed);
        }
    }

    /// Whether `token` holds `channel` (a scan of its subscribers: used
    /// only for private channels, which have a handful).
    fn holds(&self, token: usize, channel: &str) -> bool {
        self.index
            .get(channel)
            .is_some_and(|c| c.subscribers.contains(&(token as u32)))
    }

    fn lease(&mut self, token: usize, channel: &str, expires: u64, renewed: bool) {
        if let Some(gen) = self.conns.get(token).map(|c| c.lease_gen) {
            self.expiries
                .set(token as u32, gen, channel, expires, renewed);
        }
    }

    /// A newer token for a private subscription: it now lasts until the
    /// new token's expiry. A refused token changes nothing: the
    /// subscription still ends when the old one expires.
    fn refresh(&mut self, token: usize, channel: &str, auth: &str) {
        if !(self.config.is_private(channel) && self.holds(token, channel)) {
            let reply = self.counted_error(
                Some(channel),
                ErrorCode::BadRequest,
                "refresh needs a private channel this connection holds",
            );
            return self.send_text(token, reply);
        }
        match self.check_token(channel, Some(auth)) {
            Ok(Some(expires)) => {
                self.lease(token, channel, expires, true);
                self.send_text(token, protocol::reply("refreshed", channel));
            }
            Ok(None) => {}
            Err(e) => {
                let reply = self.counted_error(Some(channel), ErrorCode::Forbidden, &e.to_string());
                self.send_text(token, reply);
            }
        }
    }

    /// Ends every private subscription whose token expired without a
    /// refresh, telling the browser why; its connection stays open.
    pub(crate) fn expire_private_subscriptions(&mut self) {
        let conns = &self.conns;
        let ended = self.expiries.due(unix_now(), |conn, gen| {
            conns.get(conn as usize).is_some_and(|c| c.lease_gen == gen)
        });
        for lease in ended {
            let (conn, channel) = (lease.conn, lease.channel);
            if self.index.unsubscribe(&mut self.conns, conn, &channel) {
                let reply = self.counted_error(
                    Some(&channel),
                    ErrorCode::TokenExpired,
                    "token expired; subscribe again with a new token",
                );
                self.send_text(conn as usize, reply);
            }
        }
    }

    /// Checks (and counts a refusal of) the token a private channel needs;
    /// `Some(expiry)` for a private channel, `None` for a public one.
    pub(crate) fn check_token(
        &self,
        channel: &str,
        auth: Option<&str>,
    ) -> Result<Option<u64>, TokenError> {
        if !self.config.is_private(channel) {
            return Ok(None);
        }
        let result = match (&self.tokens, auth) {
            (None, _) => Err(TokenError::NoSecret),
            (_, None) => Err(TokenError::Missing),
            (Some(key), Some(t)) => key.verify_until(t, channel, unix_now()).map(Some),
        };
        if let Err(e) = result {
            WorkerMetrics::add(&self.stats().token_refusals[e.index()], 1);
        }
        result
    }

    /// Subscribes, then answers with what the engine says: the reply goes
    /// first, then history, then (from the queue) live frames.
    pub(crate) fn subscribe_checked(
        &mut self,
        token: usize,
        channel: &str,
        since: Option<Since<'_>>,
    ) {
        let max = self.config.max_subscriptions;
        let fresh_channel = self.index.get(channel).is_none();
        let added = match self
            .index
            .subscribe(&mut self.conns, token as u32, channel, max)
        {
            Ok(added) => added,
            Err(_) => {
                let message = format!("at most {max} subscriptions per connection");
                let reply =
                    self.counted_error(Some(channel), ErrorCode::TooManySubscriptions, &message);
                return self.send_text(token, reply);
            }
        };
        if !added {
            // Already subscribed: it has had everything live. Answering
            // costs no engine lookup, so repeating a `sub` buys a flooder
            // nothing.
            return self.send_text(token, protocol::subscribed(channel, None, None));
        }
        if fresh_channel && self.engine.wants_interest() {
            self.engine.interest(self.id, channel, true);
        }
        match self.engine.recover(channel, since, self.passed_seq) {
            Some(recovery) => self.answer_subscription(token, channel, recovery),
            None => {
                let since = since.map(|s| (Box::from(s.epoch), s.off));
                let waiting = Waiting {
                    token: token as u32,
                    since,
                };
                self.index.wait(channel, waiting);
            }
        }
    }

    /// The engine now knows `channel`: answer every subscription that waited.
    pub(crate) fn on_channel_ready(&mut self, channel: &str) {
        for waiting in self.index.take_waiting(channel) {
            let since = waiting
                .since
                .as_ref()
                .map(|(epoch, off)| Since { epoch, off: *off });
            // Still `None` only if the engine lost the channel again; the
            // subscription then stays, answered by the next Ready.
            match self.engine.recover(channel, since, self.passed_seq) {
                Some(recovery) => {
                    self.answer_subscription(waiting.token as usize, channel, recovery)
                }
                None => self.index.wait(channel, waiting),
            }
        }
    }

    /// The engine cannot load `channel` now: every subscription that waited
    /// for it is refused with `unavailable` and undone, so the browser's
    /// retry starts afresh.
    pub(crate) fn on_channel_unavailable(&mut self, channel: &str) {
        for waiting in self.index.take_waiting(channel) {
            let token = waiting.token as usize;
            self.index
                .unsubscribe(&mut self.conns, waiting.token, channel);
            let reply = self.counted_error(
                Some(channel),
                ErrorCode::Unavailable,
                "channel history is unavailable right now; retry",
            );
            self.send_text(token, reply);
        }
    }

    fn answer_subscription(&mut self, token: usize, channel: &str, recovery: Recovery) {
        let position = recovery.position.as_ref().map(|(e, off)| (&**e, *off));
        self.send_text(
            token,
            protocol::subscribed(channel, position, recovery.recovered),
        );
        let replayed = recovery.frames.len() as u64;
        if self.cork.is_corked(token) {
            for frame in recovery.frames {
                self.send(token, frame);
            }
        } else {
            self.send_replay(token, &recovery.frames);
        }
        WorkerMetrics::add(&self.stats().replayed, replayed);
    }

    /// An `{"op":"error"}` reply, counted by code for /metrics.
    fn counted_error(&self, channel: Option<&str>, code: ErrorCode, message: &str) -> Vec<u8> {
        WorkerMetrics::add(&self.stats().command_errors[code as usize], 1);
        protocol::error(channel, code, message)
    }

    pub(crate) fn send_text(&mut self, token: usize, payload: Vec<u8>) {
        let mut frame = Vec::with_capacity(payload.len() + 4);
        encode_frame(&mut frame, OpCode::Text, &payload, None);
        self.send(token, frame.into());
    }
}
