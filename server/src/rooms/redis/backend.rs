//! The booking backend's calls on rooms kept in Redis (`PUT`, `GET`,
//! `DELETE`, `verify`), from the publish API's blocking pool: each is one
//! script, waited for at most the Redis timeout, and answers 503
//! (`RoomError::Unavailable`) when Redis does not answer.

use std::sync::Arc;

use crate::engine::log::random_u64;
use crate::rooms::redis::link::{self, Reply};
use crate::rooms::redis::mirror::{Figures, Mirror};
use crate::rooms::redis::{RedisRooms, CLOSED_KEEP_S};
use crate::rooms::room::{Settings, View, IDLE_CREDIT};
use crate::rooms::ticket::{self, TicketError};
use crate::rooms::{RoomError, Verdict, MAX_ROOMS};

impl RedisRooms {
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
