//! Waiting rooms kept in Redis (`--redis`), so every node agrees: one line
//! per room across the cluster, places handed out, the pre-queue shuffled
//! and tickets admitted by atomic Lua scripts (`scripts.rs`), whichever
//! node runs them. Each node keeps only its own browsers (`mirror.rs`) and
//! ticks every room: the tick script admits what the time since the last
//! tick (by any node) earned, so the cluster admits at the configured rate
//! however many nodes tick, and returns the admissions made since this
//! node last looked, which it pushes to its own browsers.
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

mod link;
pub mod mirror;
mod scripts;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::channels::protocol::ErrorCode;
use crate::channels::token::TokenKey;
use crate::engine::log::random_u64;
use crate::engine::redis::RedisLink;
use crate::rooms::room::{Holder, Push, Settings, View, IDLE_CREDIT};
use crate::rooms::ticket::{self, Admission, Spot, TicketError};
use crate::rooms::{messages, Defaults, RoomError, Verdict, MAX_ROOMS};
use link::{Link, LinkError, Reply};
use mirror::{Admitted, Figures, Mirror, Tick};
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

    /// Time passes: every room known in Redis or here is ticked, once per
    /// call; positions are counted at most once a second.
    pub fn tick(self: &Arc<Self>, now: u64) {
        let s = now / 1000;
        let (rooms, pass) = {
            let mut state = self.lock();
            let pass = s != state.last_pass_s;
            state.last_pass_s = s;
            let mut rooms: HashSet<Arc<str>> = state.names.iter().cloned().collect();
            rooms.extend(state.rooms.keys().cloned());
            let asks: Vec<(Arc<str>, i64, Vec<u64>)> = rooms
                .into_iter()
                .map(|name| match state.rooms.get(&name) {
                    Some(m) => {
                        let asked = if m.figures.opened {
                            m.unmapped(MAP_CAP)
                        } else {
                            Vec::new()
                        };
                        let seen = m.seen.map_or(-1, |v| v as i64);
                        (name, seen, asked)
                    }
                    None => (name, -1, Vec::new()),
                })
                .collect();
            (asks, pass)
        };
        let listing = pass;
        let grace_ms = u64::from(self.defaults.grace_s) * 1000;
        let this = self.clone();
        let answers = self.link.wait(async move {
            let mut out = Vec::with_capacity(rooms.len());
            for (name, seen, asked) in rooms {
                let mut args = vec![
                    seen.to_string(),
                    grace_ms.to_string(),
                    if pass { "1" } else { "0" }.to_string(),
                    TICK_CAP.to_string(),
                    IDLE_CREDIT.to_string(),
                    LOG_KEEP.to_string(),
                ];
                args.extend(asked.iter().map(u64::to_string));
                let answer = this.link.call(|s| &s.tick, &name, &args).await?;
                out.push((name, asked, answer));
            }
            let names = if listing {
                Some(this.link.room_names().await?)
            } else {
                None
            };
            Ok((out, names))
        });
        let (answers, names) = match answers {
            Ok(a) => a,
            Err(e) => {
                self.warn("a tick", &e);
                return;
            }
        };
        let _delivery = self.delivery.lock().unwrap_or_else(|e| e.into_inner());
        let mut pushes = Vec::new();
        {
            let mut state = self.lock();
            let state = &mut *state;
            if let Some(names) = names {
                state.names = names.iter().map(|n| Arc::from(n.as_str())).collect();
            }
            for (name, asked, answer) in answers {
                self.apply(state, name, &asked, answer, (now, pass), &mut pushes);
            }
            for push in pushes.iter().filter(|p| p.done) {
                state.holders.remove(&push.holder);
            }
        }
        (self.deliver)(pushes);
    }

    fn apply(
        &self,
        state: &mut State,
        name: Arc<str>,
        asked: &[u64],
        answer: Reply,
        (now, pass): (u64, bool),
        pushes: &mut Vec<Push>,
    ) {
        let items = answer.items();
        let text = |i: usize| items.get(i).map_or("", Reply::text);
        if text(0) != "ok" {
            // Deleted: everyone waiting here is told, with the reason.
            if let Some(m) = state.rooms.remove(&name) {
                let reason = match text(1) {
                    "" => "the room was closed",
                    r => r,
                };
                pushes.extend(m.close(reason));
            }
            state.names.retain(|n| *n != name);
            return;
        }
        let Some(mut tick) = parse_tick(items) else {
            tracing::warn!(room = %name, "an unreadable tick answer from Redis");
            return;
        };
        if !pass {
            tick.gone = None;
        }
        if state
            .rooms
            .get(&name)
            .is_some_and(|m| m.figures.epoch != tick.figures.epoch)
        {
            if let Some(old) = state.rooms.remove(&name) {
                pushes.extend(old.close("the room was closed"));
            }
        }
        let mirror = state
            .rooms
            .entry(name.clone())
            .or_insert_with(|| Mirror::new(name.clone(), tick.figures.clone()));
        let mut moved = Vec::new();
        mirror.apply(&self.key, tick, asked, now, pushes, &mut moved);
        for (holder, spot) in moved {
            state.holders.insert(holder, (name.clone(), spot));
        }
    }

    /// `PUT /api/rooms/NAME`.
    pub fn put(&self, name: &str, settings: Settings) -> Result<bool, RoomError> {
        let opt = |v: Option<String>| v.unwrap_or_default();
        let args = vec![
            settings.admit_per_minute.to_string(),
            opt(settings.opens_at.map(|v| v.to_string())),
            opt(settings.max_admitted.map(|v| v.to_string())),
            settings.admission_ttl.to_string(),
            format!("{:x}", random_u64()),
            (random_u64() % 2_147_483_646 + 1).to_string(),
            MAX_ROOMS.to_string(),
            name.to_string(),
            IDLE_CREDIT.to_string(),
        ];
        let answer = self.call(|s| &s.put, name, args)?;
        match answer.items().first().map(Reply::text) {
            Some("created") => Ok(true),
            Some("updated") => Ok(false),
            Some("too_many") => Err(RoomError::TooMany),
            _ => Err(RoomError::Unavailable(
                "unexpected answer from Redis".into(),
            )),
        }
    }

    fn call(&self, which: link::Which, room: &str, args: Vec<String>) -> Result<Reply, RoomError> {
        let link = self.link.clone();
        let room = room.to_string();
        self.link
            .wait(async move { link.call(which, &room, &args).await })
            .map_err(|e| RoomError::Unavailable(e.to_string()))
    }

    /// `GET /api/rooms/NAME`: the figures from Redis, the measured rate and
    /// waits from this node's reading of the admission log.
    pub fn view(&self, name: &str, now: u64) -> Result<View, RoomError> {
        let answer = self.call(|s| &s.view, name, Vec::new())?;
        let items = answer.items();
        if items.is_empty() {
            return Err(RoomError::Unknown(name.to_string()));
        }
        let text = |i: usize| items.get(i).map_or("", Reply::text);
        let figures = Figures {
            epoch: u64::from_str_radix(text(0), 16).unwrap_or(0),
            opened: text(1) == "1",
            admit_per_minute: text(2).parse().unwrap_or(0),
            opens_at: text(3).parse().ok(),
            max_admitted: text(4).parse().ok(),
            admission_ttl: text(5).parse().unwrap_or(0),
            admitted_total: text(6).parse().unwrap_or(0),
            waiting: text(7).parse().unwrap_or(0),
            outstanding: text(8).parse().unwrap_or(0),
        };
        let state = self.lock();
        let mut view = Mirror::new(Arc::from(name), figures.clone()).view(now);
        if let Some(m) = state
            .rooms
            .get(name)
            .filter(|m| m.figures.epoch == figures.epoch)
        {
            let local = m.view(now);
            view.median_wait_s = local.median_wait_s;
            view.measured_per_minute = local.measured_per_minute;
        }
        Ok(view)
    }

    /// `DELETE /api/rooms/NAME`: this node tells its browsers at once, the
    /// others at their next tick.
    pub fn close(&self, name: &str, reason: &str) -> Result<(), RoomError> {
        let args = vec![
            reason.to_string(),
            name.to_string(),
            CLOSED_KEEP_S.to_string(),
        ];
        let answer = self.call(|s| &s.close, name, args)?;
        if answer.items().first().map(Reply::text) != Some("closed") {
            return Err(RoomError::Unknown(name.to_string()));
        }
        let _delivery = self.delivery.lock().unwrap_or_else(|e| e.into_inner());
        let pushes = {
            let mut state = self.lock();
            state.names.retain(|n| n.as_ref() != name);
            state.holders.retain(|_, (room, _)| room.as_ref() != name);
            state
                .rooms
                .remove(name)
                .map(|m| m.close(reason))
                .unwrap_or_default()
        };
        (self.deliver)(pushes);
        Ok(())
    }

    /// `POST /api/rooms/NAME/verify`: the signature here, the generation
    /// from Redis.
    pub fn verify(&self, name: &str, token: &str, now: u64) -> Result<Verdict, RoomError> {
        let view = self.call(|s| &s.view, name, Vec::new())?;
        let Some(epoch) = view.items().first().map(Reply::text) else {
            return Err(RoomError::Unknown(name.to_string()));
        };
        let epoch = u64::from_str_radix(epoch, 16).unwrap_or(0);
        Ok(
            match ticket::read_admission(&self.key, token, name, now / 1000) {
                Ok(a) if a.epoch == epoch => Verdict::Valid {
                    place: a.place,
                    expires: a.expires,
                },
                Ok(_) => Verdict::Invalid(TicketError::OtherRoom),
                Err(e) => Verdict::Invalid(e),
            },
        )
    }

    /// Every room this node mirrors, for /metrics.
    pub fn with_mirrors<T>(&self, f: impl FnOnce(&[&Mirror]) -> T) -> T {
        let state = self.lock();
        let mut rooms: Vec<&Mirror> = state.rooms.values().collect();
        rooms.sort_by(|a, b| a.name.cmp(&b.name));
        f(&rooms)
    }
}

/// Reads a tick script's `ok` answer.
fn parse_tick(items: &[Reply]) -> Option<Tick> {
    let text = |i: usize| items.get(i).map_or("", Reply::text);
    let number = |i: usize| text(i).parse::<u64>().ok();
    let figures = Figures {
        epoch: u64::from_str_radix(text(1), 16).ok()?,
        opened: text(2) == "1",
        admit_per_minute: text(3).parse().ok()?,
        opens_at: number(4),
        max_admitted: text(5).parse().ok(),
        admission_ttl: number(6)?,
        admitted_total: number(7)?,
        waiting: number(8)?,
        outstanding: number(9)?,
    };
    let log = items
        .get(13)?
        .items()
        .iter()
        .filter_map(|e| {
            let mut f = e.text().split(' ').map(|v| v.parse::<u64>().ok());
            Some(Admitted {
                place: f.next()??,
                seq: f.next()??,
                expires: f.next()??,
                at_s: f.next()??,
                waited_s: u32::try_from(f.next()??).unwrap_or(u32::MAX),
            })
        })
        .collect();
    let mapped = items
        .get(14)?
        .items()
        .iter()
        .map(|r| r.text().parse().ok())
        .collect();
    let gone: Vec<u64> = items
        .get(15)?
        .items()
        .iter()
        .filter_map(|r| r.text().parse().ok())
        .collect();
    Some(Tick {
        figures,
        front: number(10),
        next_place: number(11)?,
        log_base: number(12)?,
        log,
        mapped,
        gone: Some(gone),
    })
}
