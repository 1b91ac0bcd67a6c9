//! Time passing for the rooms of a node in Redis: every 100 ms one tick
//! script per room (admissions, expiries, the grace period, the admission
//! log since this node last read it, and once a second the front of the
//! line and its lost places), applied to this node's mirrors, whose pushes
//! go to the workers. It runs on the rooms ticker's thread, which may wait
//! for Redis; workers never do.

use std::collections::HashSet;
use std::sync::Arc;

use crate::rooms::redis::link::Reply;
use crate::rooms::redis::mirror::{Admitted, Figures, Mirror, Tick};
use crate::rooms::redis::{RedisRooms, State, LOG_KEEP, MAP_CAP, TICK_CAP};
use crate::rooms::room::{Push, IDLE_CREDIT};

impl RedisRooms {
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
            // Every room at once: the command connection pipelines them,
            // so a thousand rooms cost one tick's round trip, not a thousand.
            let calls = rooms.into_iter().map(|(name, seen, asked)| {
                let this = this.clone();
                async move {
                    let mut args = vec![
                        seen.to_string(),
                        grace_ms.to_string(),
                        if pass { "1" } else { "0" }.to_string(),
                        TICK_CAP.to_string(),
                        IDLE_CREDIT.to_string(),
                        LOG_KEEP.to_string(),
                    ];
                    args.extend(asked.iter().map(u64::to_string));
                    let answer = this.link.call(|s| &s.tick, &name, &args).await;
                    (name, asked, answer)
                }
            });
            let out = futures_util::future::join_all(calls).await;
            // A listing that fails is tried again next second; the rooms
            // this node knows keep ticking meanwhile.
            let names = if listing {
                this.link.room_names().await.ok()
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
                let answer = match answer {
                    Ok(answer) => answer,
                    Err(e) => {
                        self.warn("a tick", &e);
                        continue;
                    }
                };
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
