//! The waiting room: fair admission at the rate the booking backend can
//! take, ridden on the browsers' own WebSockets (`docs/waiting-room.md`).
//!
//! - `ticket`: the signed ticket and admission token formats.
//! - `room`: one room's line, pre-queue shuffle, admission and positions
//!   (pure logic, clock passed in).
//! - `stats`: measured admission rate and wait times.
//! - `messages`: the frames browsers receive.
//! - `session`: the worker's side (a join command, a disconnect, pushes).
//! - `ticker`: the thread that makes time pass for every room.
//! - `redis`: with `--redis`, the same rooms kept in Redis and shared by
//!   every node (its own design note); `Rooms` hands every call to it then.
//!
//! Design (in-process), and why messages stay bounded at 500,000 waiting:
//! the rooms live here, once per process, behind one lock, and hold each waiting person as
//! a 48-byte entry kept in place order, with the (worker, slab token) of the
//! connection to push to. Nothing is added to the 48-byte `Conn`: a flag bit
//! in its existing `flags` byte says "tell the rooms when I close". One
//! ticker thread, every 100 ms, admits from the front of each line (a
//! token-bucket accumulator, so admission is smooth, not a burst a minute)
//! and once a second counts positions and chooses whom to tell: only
//! changed positions, at most one update per connection every
//! `UPDATE_INTERVAL_S`, and at most `MAX_UPDATES_PER_SECOND` per room,
//! round-robin. The frames it chose go to each worker as one inbox command
//! (`Command::Room`) per tick, so a second costs at most ten commands per
//! worker however big the room. A worker writes each frame only if the
//! connection still has the room flag and the generation (`Conn::lease_gen`)
//! the frame was chosen for, so a frame queued for a connection that has
//! since closed never reaches a later one in the same slab slot.
//!
//! Measured (`cargo run --release -p server --example room_cost`): at
//! 500,000 in one room the once-a-second pass holds the lock for a median
//! 8.6 ms (max 21 ms; 13x the floor of walking 500,000 48-byte records),
//! choosing its 20,000 updates; a worker's `join` waits at most that long.
//!
//! A disconnect releases the connection (no more pushes), not the place:
//! the ticket keeps it for `--room-grace`, and a rejoin with the ticket on
//! any connection takes it back.
//!
//! Must not: block a worker beyond this lock (no I/O under it), or grow
//! per-connection state in `core`.

pub mod messages;
pub mod redis;
pub mod room;
#[cfg(test)]
mod room_tests;
pub mod session;
pub mod stats;
pub mod ticker;
pub mod ticket;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::channels::broker::Broker;
use crate::channels::name;
use crate::channels::protocol::ErrorCode;
use crate::channels::token::TokenKey;
use crate::engine::log::random_u64;
use crate::engine::redis::RedisLink;
use crate::wire::frame::{encode_frame, OpCode};
use redis::RedisRooms;
use room::{Holder, Push, Room, Settings};
use stats::WaitTimes;
use ticket::{Spot, TicketError};

pub use room::View;

/// Rooms one server holds at most: each tick walks them all. A booking
/// backend runs a handful (one per sale or clinic opening).
pub const MAX_ROOMS: usize = 1_000;
/// Highest `admit_per_minute`: a million a minute is beyond any booking
/// backend, and keeps the accumulator's arithmetic exact.
pub const MAX_ADMIT_PER_MINUTE: u32 = 1_000_000;
/// Longest `admission_ttl`: a day.
pub const MAX_ADMISSION_TTL_S: u64 = 86_400;

/// Why the booking backend's request about a room was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    #[error("waiting rooms need --token-secret to sign tickets")]
    NoSecret,
    #[error("invalid room name '{0}'")]
    BadName(String),
    #[error("no room '{0}'")]
    Unknown(String),
    #[error("at most {MAX_ROOMS} rooms")]
    TooMany,
    #[error("{0}")]
    BadSettings(String),
    /// Redis (with `--redis`) did not answer: retry.
    #[error("the rooms' store is unavailable: {0}")]
    Unavailable(String),
}

/// The booking backend's verify answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Valid { place: u64, expires: u64 },
    Invalid(TicketError),
}

/// Options every room shares (from the config).
#[derive(Clone, Copy, Debug)]
pub struct Defaults {
    /// Seconds a ticket keeps its place while its holder is away.
    pub grace_s: u32,
    /// Admission validity when a room does not set `admission_ttl`.
    pub admission_ttl_s: u64,
}

#[derive(Default)]
struct Registry {
    rooms: HashMap<Arc<str>, Room>,
    /// Names of rooms the backend deleted, so a join can say "closed"
    /// rather than "unknown". Grows only by the backend's deletions.
    closed: HashSet<Arc<str>>,
    /// Who waits where, to find the entry when a connection closes.
    holders: HashMap<Holder, (Arc<str>, Spot)>,
}

/// Every room of this server.
pub struct Rooms {
    key: Option<TokenKey>,
    defaults: Defaults,
    state: Mutex<Registry>,
    broker: Option<Arc<Broker>>,
    /// With `--redis`: every call goes there instead (`redis/`).
    shared: Option<Arc<RedisRooms>>,
}

impl Rooms {
    /// `broker` takes pushes to the workers; without it (unit tests) pushes
    /// are dropped.
    pub fn new(key: Option<TokenKey>, defaults: Defaults, broker: Option<Arc<Broker>>) -> Rooms {
        Rooms {
            key,
            defaults,
            state: Mutex::new(Registry::default()),
            broker,
            shared: None,
        }
    }

    /// Rooms kept in Redis through the engine's link, shared by every node
    /// (`redis/`); without a token secret rooms stay disabled as in-process.
    pub fn in_redis(
        key: Option<TokenKey>,
        defaults: Defaults,
        broker: Arc<Broker>,
        link: RedisLink,
    ) -> Rooms {
        let mut rooms = Rooms::new(key.clone(), defaults, Some(broker.clone()));
        rooms.shared = key.map(|key| {
            let deliver = Box::new(move |pushes| deliver(&broker, pushes));
            RedisRooms::new(link, key, defaults, deliver)
        });
        rooms
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panic under the lock leaves plain data, still consistent enough
        // to serve; refusing every room forever would be worse.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A browser's join; answers with the frame payload to send it, or
    /// `None` when the answer will come through the worker's inbox (Redis).
    pub fn join(
        &self,
        room: &str,
        ticket: Option<&str>,
        holder: Holder,
        now: u64,
    ) -> Option<Vec<u8>> {
        if let Some(shared) = &self.shared {
            return shared.join(room, ticket, holder);
        }
        Some(self.join_here(room, ticket, holder, now))
    }

    fn join_here(&self, room: &str, ticket: Option<&str>, holder: Holder, now: u64) -> Vec<u8> {
        let Some(key) = &self.key else {
            let message = "waiting rooms are disabled on this server";
            return messages::error(room, ErrorCode::UnknownRoom, message);
        };
        let mut guard = self.lock();
        let registry = &mut *guard;
        let Some(r) = registry.rooms.get_mut(room) else {
            let (code, message) = if registry.closed.contains(room) {
                (ErrorCode::RoomClosed, "this room is closed")
            } else {
                (ErrorCode::UnknownRoom, "no such room")
            };
            return messages::error(room, code, message);
        };
        // A connection holds one place per room: joining again without a
        // ticket resumes it, so a flood of joins on one socket costs one
        // place, not one each.
        let held = match (ticket, registry.holders.get(&holder)) {
            (None, Some((name, spot))) if name.as_ref() == room => Some(r.ticket_for(key, *spot)),
            _ => None,
        };
        match r.join(key, held.as_deref().or(ticket), holder, now) {
            Ok(joined) => {
                if let Some(old) = joined.replaced {
                    registry.holders.remove(&old);
                }
                // One room per connection: a join elsewhere releases the
                // earlier one's pushes (its ticket keeps its place).
                if let Some((name, spot)) = registry.holders.remove(&holder) {
                    if let Some(earlier) = registry.rooms.get_mut(&name) {
                        if name.as_ref() != room || Some(spot) != joined.spot {
                            earlier.leave(spot, holder, now);
                        }
                    }
                }
                if let (Some(spot), Some(r)) = (joined.spot, registry.rooms.get(room)) {
                    registry.holders.insert(holder, (r.name.clone(), spot));
                }
                joined.payload
            }
            Err(e) => messages::error(room, e.code(), &e.to_string()),
        }
    }

    /// A connection that joined a room has closed.
    pub fn leave(&self, holder: Holder, now: u64) {
        if let Some(shared) = &self.shared {
            return shared.leave(holder);
        }
        let mut guard = self.lock();
        let registry = &mut *guard;
        if let Some((name, spot)) = registry.holders.remove(&holder) {
            if let Some(room) = registry.rooms.get_mut(&name) {
                room.leave(spot, holder, now);
            }
        }
    }

    /// Time passes for every room; their pushes go to the workers.
    pub fn tick(&self, now: u64) {
        if let Some(shared) = &self.shared {
            return shared.tick(now);
        }
        let Some(key) = &self.key else {
            return;
        };
        let mut pushes = Vec::new();
        {
            let mut guard = self.lock();
            let registry = &mut *guard;
            for room in registry.rooms.values_mut() {
                room.tick(key, self.defaults.grace_s, now, &mut pushes);
            }
            for push in pushes.iter().filter(|p| p.done) {
                registry.holders.remove(&push.holder);
            }
        }
        self.deliver(pushes);
    }

    /// `PUT /api/rooms/NAME`: creates the room, or updates it at once.
    pub fn put(&self, name: &str, settings: Settings, now: u64) -> Result<bool, RoomError> {
        if self.key.is_none() {
            return Err(RoomError::NoSecret);
        }
        if !name::is_valid(name) {
            return Err(RoomError::BadName(name.to_string()));
        }
        if let Some(shared) = &self.shared {
            return shared.put(name, settings);
        }
        let mut registry = self.lock();
        if let Some(room) = registry.rooms.get_mut(name) {
            room.update(settings);
            return Ok(false);
        }
        if registry.rooms.len() >= MAX_ROOMS {
            return Err(RoomError::TooMany);
        }
        let name: Arc<str> = Arc::from(name);
        registry.closed.remove(&name);
        let room = Room::new(name.clone(), random_u64(), settings, now, random_u64());
        registry.rooms.insert(name, room);
        Ok(true)
    }

    pub fn defaults(&self) -> Defaults {
        self.defaults
    }

    /// `GET /api/rooms/NAME`.
    pub fn view(&self, name: &str, now: u64) -> Result<View, RoomError> {
        if let Some(shared) = &self.shared {
            return shared.view(name, now);
        }
        let registry = self.lock();
        let room = registry
            .rooms
            .get(name)
            .ok_or_else(|| RoomError::Unknown(name.to_string()))?;
        Ok(room.view(now))
    }

    /// `DELETE /api/rooms/NAME`: everyone still waiting is told `reason`.
    pub fn close(&self, name: &str, reason: &str) -> Result<(), RoomError> {
        if let Some(shared) = &self.shared {
            return shared.close(name, reason);
        }
        let pushes = {
            let mut guard = self.lock();
            let registry = &mut *guard;
            let room = registry
                .rooms
                .remove(name)
                .ok_or_else(|| RoomError::Unknown(name.to_string()))?;
            registry.closed.insert(room.name.clone());
            registry
                .holders
                .retain(|_, (room, _)| room.as_ref() != name);
            room.close(reason)
        };
        self.deliver(pushes);
        Ok(())
    }

    /// `POST /api/rooms/NAME/verify`.
    pub fn verify(&self, name: &str, token: &str, now: u64) -> Result<Verdict, RoomError> {
        let key = self.key.as_ref().ok_or(RoomError::NoSecret)?;
        if let Some(shared) = &self.shared {
            return shared.verify(name, token, now);
        }
        let registry = self.lock();
        let room = registry
            .rooms
            .get(name)
            .ok_or_else(|| RoomError::Unknown(name.to_string()))?;
        Ok(match room.verify(key, token, now) {
            Ok(a) => Verdict::Valid {
                place: a.place,
                expires: a.expires,
            },
            Err(e) => Verdict::Invalid(e),
        })
    }

    fn deliver(&self, pushes: Vec<Push>) {
        if let Some(broker) = &self.broker {
            deliver(broker, pushes);
        }
    }

    /// Per-room series for /metrics, appended to `out`. With Redis, every
    /// node shows the whole cluster's figures for each room.
    pub fn prometheus(&self, out: &mut String, now: u64) {
        match &self.shared {
            Some(shared) => shared.with_mirrors(|mirrors| {
                let rooms: Vec<(&str, View, &WaitTimes)> = mirrors
                    .iter()
                    .map(|m| (m.name.as_ref(), m.view(now), &m.waits))
                    .collect();
                stats::prometheus(out, &rooms);
            }),
            None => {
                let registry = self.lock();
                let mut rooms: Vec<(&str, View, &WaitTimes)> = registry
                    .rooms
                    .values()
                    .map(|r| (r.name.as_ref(), r.view(now), &r.waits))
                    .collect();
                rooms.sort_by(|a, b| a.0.cmp(b.0));
                stats::prometheus(out, &rooms);
            }
        }
    }
}

/// Hands pushes to their workers: one inbox command per worker.
fn deliver(broker: &Broker, pushes: Vec<Push>) {
    let mut per_worker: HashMap<u16, Vec<(u32, u16, Bytes)>> = HashMap::new();
    for push in pushes {
        let mut frame = Vec::with_capacity(push.payload.len() + 4);
        encode_frame(&mut frame, OpCode::Text, &push.payload, None);
        per_worker.entry(push.holder.worker).or_default().push((
            push.holder.token,
            push.holder.gen,
            frame.into(),
        ));
    }
    for (worker, frames) in per_worker {
        broker.send_room(usize::from(worker), frames);
    }
}

/// Unix milliseconds now: the rooms' clock in service.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
