//! What one node keeps of a room that lives in Redis: the room's figures as
//! of the last tick, the browsers connected to this node and where each
//! stands, the admissions it has read from the room's log, and the pushes
//! that follow. Pure logic, like `room`: times are passed in, Redis's
//! answers come in as a [`Tick`], pushes go out as [`Push`]es.
//!
//! Positions without a round trip per person: the line in Redis only loses
//! people (admitted from the front, lost in the middle) and gains them at
//! the back, so once a second a tick brings the front place and the places
//! lost above it, and each local place's position is its distance from the
//! front less the lost places below it (a binary search). The same bounds
//! as in-process apply per node: one update per connection every
//! `UPDATE_INTERVAL_S`, `MAX_UPDATES_PER_SECOND` per room, round-robin, and
//! only a smaller position than the last one told (an answer computed
//! before a rejoin never moves anyone back).

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::channels::protocol::ErrorCode;
use crate::channels::token::TokenKey;
use crate::rooms::messages;
use crate::rooms::room::{Holder, Push, View, MAX_UPDATES_PER_SECOND, UPDATE_INTERVAL_S};
use crate::rooms::stats::{AdmissionRate, WaitTimes};
use crate::rooms::ticket::{self, Admission, Spot};

/// How long a node remembers admissions it read for places nobody here
/// holds: a join answered by Redis just before the admission may register
/// its browser after the log was read, and must still hear of it. The race
/// lasts one answer's way through the runtime (milliseconds); 10 s covers
/// a saturated box, and at the highest rate (a million a minute) keeps
/// ~170,000 small entries.
const RECENT_MS: u64 = 10_000;

/// One admission from the room's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    pub place: u64,
    pub seq: u64,
    pub expires: u64,
    pub at_s: u64,
    pub waited_s: u32,
}

/// The room as a tick found it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    pub epoch: u64,
    pub opened: bool,
    pub admit_per_minute: u32,
    pub opens_at: Option<u64>,
    pub max_admitted: Option<u32>,
    pub admission_ttl: u64,
    pub admitted_total: u64,
    pub waiting: u64,
    pub outstanding: u64,
}

/// One tick's answer for a room.
#[derive(Debug, Clone, Default)]
pub struct Tick {
    pub figures: Figures,
    /// The first place still waiting.
    pub front: Option<u64>,
    pub next_place: u64,
    /// The seq before `log`'s first entry.
    pub log_base: u64,
    pub log: Vec<Admitted>,
    /// Places of the arrival serials the tick asked about, in order.
    pub mapped: Vec<Option<u64>>,
    /// Lost places above the front, sorted (asked once a second).
    pub gone: Option<Vec<u64>>,
}

/// A browser on this node waiting in the room. Seconds are Unix seconds.
#[derive(Debug, Clone, Copy)]
struct Local {
    holder: Holder,
    sent_pos: u32,
    sent_s: u32,
}

pub struct Mirror {
    pub name: std::sync::Arc<str>,
    pub figures: Figures,
    /// Admissions read from the log (seq of the last one); `None` until
    /// the first tick or join says where the log stands.
    pub seen: Option<u64>,
    /// Before the opening (or until the tick maps them): by arrival serial.
    pre: HashMap<u64, Local>,
    line: BTreeMap<u64, Local>,
    recent: HashMap<u64, (u64, u64)>,
    recent_order: VecDeque<(u64, u64)>,
    rate: AdmissionRate,
    pub waits: WaitTimes,
    /// Where the next round of position updates starts (a place).
    cursor: u64,
}

impl Mirror {
    pub fn new(name: std::sync::Arc<str>, figures: Figures) -> Mirror {
        Mirror {
            name,
            seen: Some(figures.admitted_total),
            figures,
            pre: HashMap::new(),
            line: BTreeMap::new(),
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            rate: AdmissionRate::default(),
            waits: WaitTimes::default(),
            cursor: 0,
        }
    }

    /// Local browsers (for the tests and metrics of this node).
    pub fn holders(&self) -> usize {
        self.pre.len() + self.line.len()
    }

    /// Arrival serials waiting for their place, at most `n`.
    pub fn unmapped(&self, n: usize) -> Vec<u64> {
        self.pre.keys().copied().take(n).collect()
    }

    /// A browser holds `spot` here now; if its place was admitted already
    /// (the log was read before this join's answer arrived), the admission.
    pub fn hold(
        &mut self,
        spot: Spot,
        holder: Holder,
        pos: Option<u32>,
        now_s: u32,
    ) -> Option<(u64, u64)> {
        let local = Local {
            holder,
            sent_pos: pos.unwrap_or(u32::MAX),
            sent_s: now_s,
        };
        match spot {
            Spot::Pre(serial) => {
                self.pre.insert(serial, local);
                None
            }
            Spot::Line(place) => match self.recent.get(&place) {
                Some(admission) => Some(*admission),
                None => {
                    self.line.insert(place, local);
                    None
                }
            },
        }
    }

    /// `holder` no longer listens for `spot` here.
    pub fn release(&mut self, spot: Spot, holder: Holder) {
        match spot {
            Spot::Pre(serial) => {
                if self.pre.get(&serial).is_some_and(|l| l.holder == holder) {
                    self.pre.remove(&serial);
                }
            }
            Spot::Line(place) => {
                if self.line.get(&place).is_some_and(|l| l.holder == holder) {
                    self.line.remove(&place);
                }
            }
        }
    }

    /// Applies a tick: places for the pre-queue, admissions from the log,
    /// and (with `gone`) position updates. Returns pushes; `moved` gets the
    /// holders whose spot changed (pre-queue to place) and `done` marks
    /// those who leave the room with their push.
    pub fn apply(
        &mut self,
        key: &TokenKey,
        tick: Tick,
        asked: &[u64],
        now_ms: u64,
        out: &mut Vec<Push>,
        moved: &mut Vec<(Holder, Spot)>,
    ) {
        self.figures = tick.figures;
        for (serial, place) in asked.iter().zip(&tick.mapped) {
            let Some(local) = self.pre.remove(serial) else {
                continue;
            };
            match place {
                Some(place) => {
                    moved.push((local.holder, Spot::Line(*place)));
                    self.line.insert(*place, local);
                }
                // Never expected (every serial below the count has a
                // place); a browser left here unmapped would hold back
                // this node's admissions for everyone, so it goes, and
                // learns its place when it rejoins.
                None => {
                    tracing::warn!(room = %self.name, serial, "a pre-queue ticket has no place after the opening")
                }
            }
        }
        // Until every local pre-queue ticket has its place, admissions wait
        // unread: one of them may be for a place not known here yet.
        if self.figures.opened && !self.pre.is_empty() {
            return;
        }
        self.read_log(key, &tick.log, tick.log_base, now_ms, out);
        if let (Some(gone), true) = (&tick.gone, self.figures.opened) {
            self.positions(tick.front, tick.next_place, gone, now_ms, out);
        }
    }

    fn read_log(
        &mut self,
        key: &TokenKey,
        log: &[Admitted],
        base: u64,
        now_ms: u64,
        out: &mut Vec<Push>,
    ) {
        if let Some(seen) = self.seen {
            if base > seen {
                tracing::warn!(room = %self.name, missed = base - seen, "waiting-room admissions were trimmed from the log before this node read them; their browsers learn of them on rejoin");
            }
        }
        while self
            .recent_order
            .front()
            .is_some_and(|(at, _)| at + RECENT_MS < now_ms)
        {
            if let Some((_, place)) = self.recent_order.pop_front() {
                self.recent.remove(&place);
            }
        }
        for a in log {
            self.rate.add(a.at_s);
            self.waits.add(a.waited_s);
            match self.line.remove(&a.place) {
                Some(local) => {
                    let admission = Admission {
                        epoch: self.figures.epoch,
                        place: a.place,
                        expires: a.expires,
                    };
                    let token = ticket::mint_admission(key, &self.name, admission);
                    out.push(Push {
                        holder: local.holder,
                        payload: messages::admitted(&self.name, &token, a.expires, a.seq),
                        done: true,
                    });
                }
                None => {
                    self.recent.insert(a.place, (a.seq, a.expires));
                    self.recent_order.push_back((now_ms, a.place));
                }
            }
        }
        self.seen = Some(base + log.len() as u64);
    }

    /// Counts positions of the local browsers and pushes changed ones.
    fn positions(
        &mut self,
        front: Option<u64>,
        next_place: u64,
        gone: &[u64],
        now_ms: u64,
        out: &mut Vec<Push>,
    ) {
        let Some(front) = front else {
            return;
        };
        let s = (now_ms / 1000) as u32;
        let mut budget = MAX_UPDATES_PER_SECOND;
        let start = self.cursor;
        self.cursor = 0;
        let eta_rate = self.per_second(now_ms);
        let (after, before): (Vec<_>, Vec<_>) = (
            self.line.range(start..).map(|(p, _)| *p).collect(),
            self.line.range(..start).map(|(p, _)| *p).collect(),
        );
        for place in after.into_iter().chain(before) {
            if place < front || place >= next_place {
                continue;
            }
            let lost_below = gone.partition_point(|g| *g < place) as u64;
            let pos = u32::try_from(place - front + 1 - lost_below.min(place - front))
                .unwrap_or(u32::MAX);
            let Some(local) = self.line.get_mut(&place) else {
                continue;
            };
            if pos >= local.sent_pos || s.saturating_sub(local.sent_s) < UPDATE_INTERVAL_S {
                continue;
            }
            if budget == 0 {
                self.cursor = place;
                break;
            }
            budget -= 1;
            local.sent_pos = pos;
            local.sent_s = s;
            let eta = eta_rate.map(|r| (f64::from(pos) / r).ceil() as u64);
            out.push(Push {
                holder: local.holder,
                payload: messages::queued(&self.name, None, Some(pos), eta, None),
                done: false,
            });
        }
    }

    /// Admissions per second for estimates: measured over the last minute
    /// once there is enough, else configured; `None` at rate 0.
    fn per_second(&self, now_ms: u64) -> Option<f64> {
        let mut per_s = self.rate.per_second(now_ms / 1000);
        if per_s <= 0.0 {
            per_s = f64::from(self.figures.admit_per_minute) / 60.0;
        }
        (per_s > 0.0).then_some(per_s)
    }

    /// The estimated wait of `position` (before the opening: until it).
    pub fn eta(&self, position: Option<u32>, now_ms: u64) -> Option<u64> {
        match position {
            None => self
                .figures
                .opens_at
                .map(|at| at.saturating_sub(now_ms / 1000)),
            Some(pos) => self
                .per_second(now_ms)
                .map(|r| (f64::from(pos) / r).ceil() as u64),
        }
    }

    /// Everyone waiting here is told the room closed.
    pub fn close(self, reason: &str) -> Vec<Push> {
        let payload = messages::error(&self.name, ErrorCode::RoomClosed, reason);
        self.pre
            .values()
            .chain(self.line.values())
            .map(|l| Push {
                holder: l.holder,
                payload: payload.clone(),
                done: true,
            })
            .collect()
    }

    pub fn view(&self, now_ms: u64) -> View {
        let f = &self.figures;
        View {
            waiting: f.waiting as usize,
            admitted: f.outstanding as usize,
            admitted_total: f.admitted_total,
            admit_per_minute: f.admit_per_minute,
            opens_at: f.opens_at,
            max_admitted: f.max_admitted,
            admission_ttl: f.admission_ttl,
            open: f.opened,
            median_wait_s: self.waits.median(),
            measured_per_minute: self.rate.per_second(now_ms / 1000) * 60.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TokenKey {
        TokenKey::new(b"a secret of sixteen or more").unwrap()
    }

    fn holder(token: u32) -> Holder {
        Holder {
            worker: 0,
            gen: 0,
            token,
        }
    }

    fn open_room() -> Mirror {
        let figures = Figures {
            epoch: 7,
            opened: true,
            admit_per_minute: 60,
            admission_ttl: 600,
            ..Figures::default()
        };
        Mirror::new("sale".into(), figures)
    }

    fn tick(m: &Mirror, front: u64, gone: Vec<u64>, log: Vec<Admitted>) -> Tick {
        Tick {
            figures: m.figures.clone(),
            front: Some(front),
            next_place: 100,
            log_base: m.seen.unwrap_or(0),
            log,
            mapped: Vec::new(),
            gone: Some(gone),
        }
    }

    fn positions(out: &[Push]) -> Vec<(u32, u64)> {
        out.iter()
            .map(|p| {
                let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                (p.holder.token, v["position"].as_u64().unwrap_or(0))
            })
            .collect()
    }

    #[test]
    fn positions_count_from_the_front_less_lost_places_and_only_fall() {
        let mut m = open_room();
        let t0 = 1_000_000;
        for (token, place) in [(1, 11), (2, 13), (3, 16)] {
            m.hold(Spot::Line(place), holder(token), Some(50), t0 as u32);
        }
        let mut out = Vec::new();
        let now = (t0 + 10) * 1000;
        m.apply(
            &key(),
            tick(&m, 10, vec![12, 15], vec![]),
            &[],
            now,
            &mut out,
            &mut Vec::new(),
        );
        assert_eq!(positions(&out), [(1, 2), (2, 3), (3, 5)]);
        // A later count that (racing a rejoin) says more is never pushed.
        let mut out = Vec::new();
        let later = now + 10_000;
        m.apply(
            &key(),
            tick(&m, 5, vec![], vec![]),
            &[],
            later,
            &mut out,
            &mut Vec::new(),
        );
        assert!(out.is_empty(), "{:?}", positions(&out));
    }

    #[test]
    fn an_admission_read_before_its_join_registered_is_handed_over() {
        let mut m = open_room();
        let admitted = Admitted {
            place: 42,
            seq: 1,
            expires: 99,
            at_s: 5,
            waited_s: 3,
        };
        let mut out = Vec::new();
        m.apply(
            &key(),
            tick(&m, 43, vec![], vec![admitted]),
            &[],
            5_000,
            &mut out,
            &mut Vec::new(),
        );
        assert!(out.is_empty());
        assert_eq!(m.seen, Some(1));
        assert_eq!(m.hold(Spot::Line(42), holder(9), Some(1), 5), Some((1, 99)));
        // A browser holding its place when the admission is read gets it.
        m.hold(Spot::Line(43), holder(8), Some(1), 5);
        let next = Admitted {
            place: 43,
            seq: 2,
            ..admitted
        };
        m.apply(
            &key(),
            tick(&m, 44, vec![], vec![next]),
            &[],
            6_000,
            &mut out,
            &mut Vec::new(),
        );
        assert_eq!(out.len(), 1);
        assert!(out[0].done && out[0].holder == holder(8));
    }
}
