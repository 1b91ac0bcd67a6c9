//! Waiting rooms kept in Redis (`--redis`), so every node agrees: one line
//! per room across the cluster, places handed out, the pre-queue shuffled
//! and tickets admitted by atomic Lua scripts (`scripts.rs`), whichever
//! node runs them. Each node keeps only its own browsers (`mirror.rs`) and
//! ticks every room: the tick script admits what the time since the last
//! tick (by any node) earned, so the cluster admits at the configured rate
//! however many nodes tick, and returns the admissions made since this
//! node last looked, which it pushes to its own browsers.
//!
//! Files: `scripts.rs` (the Lua and the key layout), `link.rs` (calling
//! them), `mirror.rs` (one room as this node sees it: its browsers,
//! positions, admissions to push), `tick.rs` (time passing), `backend.rs`
//! (the booking backend's calls); this file: browsers joining and leaving.
//!
//! The seam: `rooms::Rooms` hands every call here when it was built with a
//! Redis link; the in-process rooms are untouched. Workers never wait on
//! Redis: a join is answered through the worker's inbox when Redis has
//! answered (an error frame with code `unavailable` if it cannot).
//!
//! Locks: `state` (this node's browsers) is taken by workers, briefly, and
//! never held across a call to Redis or a delivery; `delivery` is taken
//! by the threads that push (the ticker, join answers), never by workers,
//! so a join's answer and the pushes that follow reach a worker's inbox in
//! order.
//!
//! Must not: block a worker, or keep anything per connection in `core`.

mod backend;
mod link;
pub mod mirror;
mod scripts;
mod tick;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::channels::protocol::ErrorCode;
use crate::channels::token::TokenKey;
use crate::engine::log::random_u64;
use crate::engine::redis::RedisLink;
use crate::rooms::room::{Holder, Push};
use crate::rooms::ticket::{self, Admission, Spot, TicketError};
use crate::rooms::{messages, Defaults};
use link::{Link, LinkError, Reply};
use mirror::{Figures, Mirror};
pub use scripts::LOG_KEEP;

/// Admissions one tick makes (and log entries it reads) at most: a node
/// that was cut off catches up over several ticks instead of holding
/// Redis for long in one script.
const TICK_CAP: usize = 10_000;
/// Arrival serials one tick asks places for, at most (one script argument
/// each).
const MAP_CAP: usize = 4_000;
/// How long a deleted room's reason is kept for joins to hear: a day, the
/// longest a browser plausibly keeps a ticket.
const CLOSED_KEEP_S: u64 = 86_400;
/// Least time between two warnings that Redis is unreachable.
const WARN_EVERY_S: u64 = 10;

#[derive(Default)]
struct State {
    rooms: HashMap<Arc<str>, Mirror>,
    holders: HashMap<Holder, (Arc<str>, Spot)>,
    /// Connections whose join Redis has not answered yet; `true` once the
    /// connection closed meanwhile, so the answer marks the place away
    /// instead of holding it for a connection that is gone.
    pending: HashMap<Holder, bool>,
    /// Room names in Redis, from the last listing.
    names: Vec<Arc<str>>,
    last_pass_s: u64,
}

/// The rooms of a node that shares them through Redis.
pub struct RedisRooms {
    link: Arc<Link>,
    key: TokenKey,
    defaults: Defaults,
    /// Identifies this node's connections in Redis' holder tags.
    node: u64,
    state: Mutex<State>,
    delivery: Mutex<()>,
    deliver: Box<dyn Fn(Vec<Push>) + Send + Sync>,
    last_warning: Mutex<Option<Instant>>,
}

impl RedisRooms {
    pub fn new(
        redis: RedisLink,
        key: TokenKey,
        defaults: Defaults,
        deliver: Box<dyn Fn(Vec<Push>) + Send + Sync>,
    ) -> Arc<RedisRooms> {
        Arc::new(RedisRooms {
            link: Link::new(redis),
            key,
            defaults,
            node: random_u64(),
            state: Mutex::new(State::default()),
            delivery: Mutex::new(()),
            deliver,
            last_warning: Mutex::new(None),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn warn(&self, what: &str, e: &LinkError) {
        let mut last = self.last_warning.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed().as_secs() >= WARN_EVERY_S) {
            *last = Some(Instant::now());
            tracing::warn!(error = %e, "waiting rooms: {what} failed; Redis unreachable?");
        }
    }

    fn tag(&self, holder: Holder) -> String {
        format!(
            "{:x}:{}:{}:{}",
            self.node, holder.worker, holder.token, holder.gen
        )
    }

    /// A browser's join: answered later, through the worker's inbox.
    pub fn join(
        self: &Arc<Self>,
        room: &str,
        ticket: Option<&str>,
        holder: Holder,
    ) -> Option<Vec<u8>> {
        let mut asked = match ticket.map(|t| ticket::read_ticket(&self.key, t, room)) {
            Some(Ok(parsed)) => Some(parsed),
            Some(Err(e)) => {
                let message = format!("ticket refused: {e}");
                return Some(messages::error(room, ErrorCode::BadTicket, &message));
            }
            None => None,
        };
        let mut leave = None;
        {
            let mut state = self.lock();
            let state = &mut *state;
            state.pending.insert(holder, false);
            if let (None, Some((name, spot))) = (asked, state.holders.get(&holder)) {
                if name.as_ref() == room {
                    asked = state.rooms.get(room).map(|m| (m.figures.epoch, *spot));
                }
            }
            // One room per connection: another join releases the earlier
            // place's pushes (its ticket keeps the place).
            if let Some((name, spot)) = state.holders.remove(&holder) {
                if let Some(m) = state.rooms.get_mut(&name) {
                    m.release(spot, holder);
                }
                if name.as_ref() != room || asked.map(|a| a.1) != Some(spot) {
                    leave = Some((name, spot));
                }
            }
        }
        if let Some((name, spot)) = leave {
            self.spawn_leave(&name, spot, holder);
        }
        let (epoch, kind, number) = match asked {
            Some((epoch, Spot::Pre(n))) => (format!("{epoch:x}"), "p", n.to_string()),
            Some((epoch, Spot::Line(n))) => (format!("{epoch:x}"), "q", n.to_string()),
            None => (String::new(), "", String::new()),
        };
        let args = vec![epoch, kind.to_string(), number, self.tag(holder)];
        let this = self.clone();
        let room = room.to_string();
        let sent = ticket.map(str::to_string);
        self.link.handle().spawn(async move {
            let answer = this.link.call(|s| &s.join, &room, &args).await;
            this.joined(&room, sent.as_deref(), holder, answer);
        });
        None
    }

    /// Redis answered a join.
    fn joined(
        self: &Arc<Self>,
        room: &str,
        sent: Option<&str>,
        holder: Holder,
        answer: Result<Reply, LinkError>,
    ) {
        let now = crate::rooms::now_ms();
        let _delivery = self.delivery.lock().unwrap_or_else(|e| e.into_inner());
        let closed = self.lock().pending.remove(&holder) == Some(true);
        let mut pushes = Vec::new();
        let reply = |payload| Push {
            holder,
            payload,
            done: false,
        };
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                self.warn("a join", &e);
                let message = "the waiting room is unavailable right now; join again shortly";
                (self.deliver)(vec![reply(messages::error(
                    room,
                    ErrorCode::Unavailable,
                    message,
                ))]);
                return;
            }
        };
        let items = answer.items();
        let text = |i: usize| items.get(i).map_or("", Reply::text);
        let refusal = match text(0) {
            "unknown" => Some((ErrorCode::UnknownRoom, "no such room".to_string())),
            "closed" => Some((ErrorCode::RoomClosed, text(1).to_string())),
            "other" => Some((ErrorCode::BadTicket, format!("ticket refused: {}", TicketError::OtherRoom))),
            "malformed" => Some((ErrorCode::BadTicket, format!("ticket refused: {}", TicketError::Malformed))),
            "expired" => Some((ErrorCode::TicketExpired, "this ticket's place is gone (admitted long ago, or away past the grace period); join again".to_string())),
            "pre" | "line" | "admitted" => None,
            other => Some((ErrorCode::Unavailable, format!("unexpected answer from Redis: {other}"))),
        };
        if let Some((code, message)) = refusal {
            (self.deliver)(vec![reply(messages::error(room, code, &message))]);
            return;
        }
        let number = |i: usize| text(i).parse::<u64>().unwrap_or(0);
        let figures_hint = Figures {
            epoch: u64::from_str_radix(text(1), 16).unwrap_or(0),
            admitted_total: number(2),
            admit_per_minute: text(3).parse().unwrap_or(0),
            opens_at: text(4).parse().ok(),
            ..Figures::default()
        };
        let epoch = figures_hint.epoch;
        if closed {
            // The browser left before Redis answered: its place starts the
            // grace period now, as for any departure.
            let spot = match text(0) {
                "pre" => Some(Spot::Pre(number(5))),
                "line" => Some(Spot::Line(number(5))),
                _ => None,
            };
            if let Some(spot) = spot {
                self.spawn_leave(room, spot, holder);
            }
            return;
        }
        let mut guard = self.lock();
        let state = &mut *guard;
        let name: Arc<str> = Arc::from(room);
        let stale = state
            .rooms
            .get(room)
            .is_some_and(|m| m.figures.epoch != epoch);
        if stale {
            // Deleted and created again while this node looked away.
            if let Some(old) = state.rooms.remove(room) {
                pushes.extend(old.close("the room was closed"));
            }
        }
        let mirror = state
            .rooms
            .entry(name.clone())
            .or_insert_with(|| Mirror::new(name.clone(), figures_hint.clone()));
        let s = (now / 1000) as u32;
        match text(0) {
            "pre" => {
                let spot = Spot::Pre(number(5));
                mirror.hold(spot, holder, None, s);
                let ticket = sent.map_or_else(
                    || ticket::mint_ticket(&self.key, room, epoch, spot),
                    str::to_string,
                );
                let eta = figures_hint
                    .opens_at
                    .map(|at| at.saturating_sub(now / 1000));
                pushes.push(reply(messages::queued(
                    room,
                    Some(&ticket),
                    None,
                    eta,
                    figures_hint.opens_at,
                )));
                state.holders.insert(holder, (name, spot));
            }
            "line" => {
                let spot = Spot::Line(number(5));
                let pos = u32::try_from(number(6)).unwrap_or(u32::MAX);
                let ticket = sent.map_or_else(
                    || ticket::mint_ticket(&self.key, room, epoch, spot),
                    str::to_string,
                );
                let eta = mirror.eta(Some(pos), now);
                pushes.push(reply(messages::queued(
                    room,
                    Some(&ticket),
                    Some(pos),
                    eta,
                    None,
                )));
                match mirror.hold(spot, holder, Some(pos), s) {
                    Some((seq, expires)) => {
                        let token = self.admission(room, epoch, number(5), expires);
                        pushes.push(Push {
                            holder,
                            payload: messages::admitted(room, &token, expires, seq),
                            done: true,
                        });
                    }
                    None => {
                        state.holders.insert(holder, (name, spot));
                    }
                }
            }
            _ => {
                let (place, seq, expires) = (number(5), number(6), number(7));
                let token = self.admission(room, epoch, place, expires);
                pushes.push(reply(messages::admitted(room, &token, expires, seq)));
            }
        }
        drop(guard);
        (self.deliver)(pushes);
    }

    fn admission(&self, room: &str, epoch: u64, place: u64, expires: u64) -> String {
        ticket::mint_admission(
            &self.key,
            room,
            Admission {
                epoch,
                place,
                expires,
            },
        )
    }

    fn spawn_leave(self: &Arc<Self>, room: &str, spot: Spot, holder: Holder) {
        let (kind, n) = match spot {
            Spot::Pre(n) => ("p", n),
            Spot::Line(n) => ("q", n),
        };
        let args = vec![kind.to_string(), n.to_string(), self.tag(holder)];
        let this = self.clone();
        let room = room.to_string();
        self.link.handle().spawn(async move {
            if let Err(e) = this.link.call(|s| &s.leave, &room, &args).await {
                this.warn("recording a browser's departure", &e);
            }
        });
    }

    /// A connection that joined a room has closed.
    pub fn leave(self: &Arc<Self>, holder: Holder) {
        let left = {
            let mut state = self.lock();
            let state = &mut *state;
            if let Some(closed) = state.pending.get_mut(&holder) {
                *closed = true;
            }
            let left = state.holders.remove(&holder);
            if let Some((name, spot)) = &left {
                if let Some(m) = state.rooms.get_mut(name) {
                    m.release(*spot, holder);
                }
            }
            left
        };
        if let Some((name, spot)) = left {
            self.spawn_leave(&name, spot, holder);
        }
    }
}
