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
            if let Err(e) = self.check_token(channel, out.token.as_deref()) {
                return Err(HandshakeError::Forbidden(format!("{channel}: {e}")));
            }
        }
        Ok(out)
    }

    /// The connect URL's subscriptions, right after the 101.
    pub(crate) fn subscribe_at_connect(&mut self, token: usize, query: ConnectQuery) {
        for channel in query.channels {
            self.subscribe_checked(token, &channel, None);
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
                    self.index.unsubscribe(&mut self.conns, token as u32, &ch);
                    protocol::reply("unsubscribed", &ch)
                } else {
                    return self.send_error(
                        token,
                        Some(&ch),
                        ErrorCode::BadChannel,
                        "invalid channel name",
                    );
                };
                self.send_text(token, reply);
            }
            Err(reason) => self.send_error(token, None, ErrorCode::BadRequest, &reason),
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
            let code = ErrorCode::BadChannel;
            return self.send_error(token, Some(channel), code, "invalid channel name");
        }
        if let Err(e) = self.check_token(channel, auth) {
            let code = ErrorCode::Forbidden;
            return self.send_error(token, Some(channel), code, &e.to_string());
        }
        self.subscribe_checked(token, channel, since);
    }

    /// Checks (and counts a refusal of) the token a private channel needs.
    pub(crate) fn check_token(&self, channel: &str, auth: Option<&str>) -> Result<(), TokenError> {
        if !self.config.is_private(channel) {
            return Ok(());
        }
        let result = match (&self.tokens, auth) {
            (None, _) => Err(TokenError::NoSecret),
            (_, None) => Err(TokenError::Missing),
            (Some(key), Some(t)) => key.verify(t, channel, unix_now()),
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
                let code = ErrorCode::TooManySubscriptions;
                return self.send_error(token, Some(channel), code, &message);
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
            self.send_error(
                token,
                Some(channel),
                ErrorCode::Unavailable,
                "channel history is unavailable right now; retry",
            );
        }
    }

    fn answer_subscription(&mut self, token: usize, channel: &str, recovery: Recovery) {
        let position = recovery.position.as_ref().map(|(e, off)| (&**e, *off));
        self.send_text(
            token,
            protocol::subscribed(channel, position, recovery.recovered),
        );
        let replayed = recovery.frames.len() as u64;
        for frame in recovery.frames {
            self.send(token, frame);
        }
        WorkerMetrics::add(&self.stats().replayed, replayed);
    }

    /// Answers a command with `{"op":"error"}` and counts the refusal by code.
    fn send_error(&mut self, token: usize, channel: Option<&str>, code: ErrorCode, message: &str) {
        WorkerMetrics::add(&self.stats().command_errors[code as usize], 1);
        self.send_text(token, protocol::error(channel, code, message));
    }

    pub(crate) fn send_text(&mut self, token: usize, payload: Vec<u8>) {
        let mut frame = Vec::with_capacity(payload.len() + 4);
        encode_frame(&mut frame, OpCode::Text, &payload, None);
        self.send(token, frame.into());
    }
}
