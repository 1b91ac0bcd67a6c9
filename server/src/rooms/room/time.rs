//! What time does to a room: the opening (the pre-queue shuffle), admission
//! at the set rate, expiry of admissions, the grace period, and counting
//! and pushing positions. Called by the rooms ticker through
//! [`Room::tick`]; like the rest of `room`, it never reads a clock.

use crate::channels::token::TokenKey;
use crate::rooms::messages;
use crate::rooms::room::{Entry, Outstanding, Push, Room};
use crate::rooms::ticket::{self, Admission};

/// Least time between two position updates to one connection: a room of
/// 500,000 then costs at most 100,000 frames a second before the per-room
/// budget below, and a person watching a number learns little more from a
/// faster one.
pub const UPDATE_INTERVAL_S: u32 = 3;
/// Position updates one room sends per second at most. Bounds what a huge
/// room costs the workers: 20,000 writes a second is about 14% of one core
/// at the ~7 us per small write measured on loopback. Past it updates go
/// round-robin, so in a room of 500,000 each person hears at least every
/// 25 s.
pub const MAX_UPDATES_PER_SECOND: usize = 20_000;

/// Most credit a room keeps while it has nobody to admit or no room for
/// more: just under one admission, so nobody waits a whole interval after
/// a quiet spell and nothing saved up turns into a burst.
pub const IDLE_CREDIT: f64 = 0.999;

impl Room {
    /// Everything time does: the opening, admissions, expiries, and once a
    /// second the grace period and position updates.
    pub fn tick(&mut self, key: &TokenKey, grace_s: u32, now: u64, out: &mut Vec<Push>) {
        if !self.opened && self.settings.opens_at.is_none_or(|at| now / 1000 >= at) {
            self.open(now);
        }
        let s = self.secs(now);
        let new_second = s != self.last_pass_s;
        if new_second {
            self.last_pass_s = s;
            self.outstanding.retain(|_, a| a.expires * 1000 > now);
        }
        if self.opened {
            self.admit(key, now, out);
        }
        if new_second {
            self.pass(grace_s, now, out);
        }
    }

    /// The shuffle: every pre-queue arrival gets a uniformly random place
    /// ahead of everyone who joins after the opening.
    pub(super) fn open(&mut self, now: u64) {
        let n = self.pre.len();
        let mut order: Vec<u64> = (0..n as u64).collect();
        let mut rng = SplitMix(self.seed);
        for i in (1..n).rev() {
            let j = (rng.next() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        // order[place] = serial
        self.perm = vec![0; n];
        for (place, serial) in order.iter().enumerate() {
            self.perm[*serial as usize] = place as u64;
        }
        let mut pre = std::mem::take(&mut self.pre);
        for (serial, entry) in pre.iter_mut().enumerate() {
            entry.place = self.perm[serial];
        }
        pre.sort_unstable_by_key(|e| e.place);
        // Positions from the first moment, so a rejoin before the first
        // count is not told 0 and then a larger number.
        let mut pos = 0;
        for entry in pre.iter_mut().filter(|e| !e.lost) {
            pos += 1;
            entry.pos = pos;
        }
        self.line = pre.into();
        self.next_place = n as u64;
        self.opened = true;
        self.last_tick_ms = now;
        self.credit = 0.0;
    }

    /// Admits at `admit_per_minute` from the front: credit accrues with the
    /// time that passed, so a 100 ms tick admits a tenth of a second's share
    /// and a late tick catches up exactly.
    fn admit(&mut self, key: &TokenKey, now: u64, out: &mut Vec<Push>) {
        let elapsed = now.saturating_sub(self.last_tick_ms);
        self.last_tick_ms = now;
        self.credit += f64::from(self.settings.admit_per_minute) * elapsed as f64 / 60_000.0;
        let s = self.secs(now);
        while self.credit >= 1.0 {
            let full = self
                .settings
                .max_admitted
                .is_some_and(|m| self.outstanding.len() >= m as usize);
            while self.line.front().is_some_and(|e| e.lost) {
                self.line.pop_front();
            }
            if full || self.line.is_empty() {
                // Nobody to admit, or no room: earned credit must not
                // become a burst later. Just under one admission, so the
                // next person in is admitted at the next tick.
                self.credit = self.credit.min(IDLE_CREDIT);
                break;
            }
            let Some(entry) = self.line.pop_front() else {
                break;
            };
            self.credit -= 1.0;
            self.waiting -= 1;
            self.admitted_total += 1;
            let expires = now / 1000 + self.settings.admission_ttl;
            let admission = Admission {
                epoch: self.epoch,
                place: entry.place,
                expires,
            };
            let token = ticket::mint_admission(key, &self.name, admission);
            self.rate.add(now / 1000);
            self.waits.add(s.saturating_sub(entry.joined_s));
            if let Some(holder) = entry.holder {
                out.push(Push {
                    holder,
                    payload: messages::admitted(&self.name, &token, expires, self.admitted_total),
                    done: true,
                });
            }
            let seq = self.admitted_total;
            self.outstanding.insert(
                entry.place,
                Outstanding {
                    token,
                    expires,
                    seq,
                },
            );
        }
    }

    /// Once a second: entries away past the grace period are lost, every
    /// position is counted, and changed positions are pushed to those not
    /// told in the last `UPDATE_INTERVAL_S`, at most
    /// `MAX_UPDATES_PER_SECOND`, round-robin from where the last pass
    /// stopped.
    fn pass(&mut self, grace_s: u32, now: u64, out: &mut Vec<Push>) {
        let s = self.secs(now);
        let gone_too_long = |e: &Entry| e.holder.is_none() && s.saturating_sub(e.gone_s) > grace_s;
        let entries: &mut dyn Iterator<Item = &mut Entry> = if self.opened {
            &mut self.line.iter_mut()
        } else {
            &mut self.pre.iter_mut()
        };
        let mut pos = 0u32;
        for e in entries {
            if e.lost {
                continue;
            }
            if gone_too_long(e) {
                e.lost = true;
                self.waiting -= 1;
                continue;
            }
            pos += 1;
            e.pos = pos;
        }
        if !self.opened {
            return;
        }
        let start = self.line.partition_point(|e| e.place < self.cursor);
        let n = self.line.len();
        let mut budget = MAX_UPDATES_PER_SECOND;
        self.cursor = 0;
        for i in (start..n).chain(0..start) {
            let due = {
                let e = &self.line[i];
                !e.lost
                    && e.holder.is_some()
                    && e.pos != e.sent_pos
                    && s.saturating_sub(e.sent_s) >= UPDATE_INTERVAL_S
            };
            if !due {
                continue;
            }
            if budget == 0 {
                self.cursor = self.line[i].place;
                break;
            }
            budget -= 1;
            let pos = self.line[i].pos;
            let payload = messages::queued(&self.name, None, Some(pos), self.eta(pos, now), None);
            let e = &mut self.line[i];
            e.sent_pos = pos;
            e.sent_s = s;
            if let Some(holder) = e.holder {
                out.push(Push {
                    holder,
                    payload,
                    done: false,
                });
            }
        }
    }
}

/// SplitMix64: a small, well-mixed generator for the shuffle. Fairness needs
/// an order nobody can predict from their arrival, not cryptography: the
/// seed is random per room and never leaves the server.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
