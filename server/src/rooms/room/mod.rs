//! One waiting room: its line, the pre-queue shuffled at the opening, the
//! admission accumulator, outstanding admissions, positions and what to push.
//!
//! What time does (the opening, admissions, position updates) is in
//! `time.rs`.
//!
//! Pure logic: every call takes the time (`now`, Unix milliseconds) and
//! returns the frames to send as [`Push`]es; it never reads a clock, locks or
//! touches a socket, so tests drive it as tables with a clock of their own.
//!
//! The line is a `VecDeque` sorted by place: joins after the opening take
//! the next place and go to the back, admission takes the front, and a
//! ticket is found by binary search. An entry whose holder stays away past
//! the grace period is marked lost where it stands and dropped when it
//! reaches the front, so nothing is ever removed from the middle.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::channels::protocol::ErrorCode;
use crate::channels::token::TokenKey;
use crate::rooms::messages;
use crate::rooms::stats::{AdmissionRate, WaitTimes};
use crate::rooms::ticket::{self, Admission, Spot, TicketError};

mod time;

pub use time::{IDLE_CREDIT, MAX_UPDATES_PER_SECOND, UPDATE_INTERVAL_S};

/// Where a browser's pushes go: a worker and a connection in its slab.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Holder {
    pub worker: u16,
    /// The connection's `Conn::lease_gen`: a frame for a connection that
    /// has closed never reaches a later one in the same slab slot.
    pub gen: u16,
    pub token: u32,
}

/// A frame for one connection; `done` when the connection leaves the room
/// with it (admitted, or the room closed).
#[derive(Debug)]
pub struct Push {
    pub holder: Holder,
    pub payload: Vec<u8>,
    pub done: bool,
}

/// What the booking backend sets with `PUT /api/rooms/NAME`.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub admit_per_minute: u32,
    /// Unix seconds; joins before it form the shuffled pre-queue.
    pub opens_at: Option<u64>,
    /// Outstanding (unexpired) admissions at most.
    pub max_admitted: Option<u32>,
    /// Seconds an admission token is valid.
    pub admission_ttl: u64,
}

/// Why a join was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("ticket refused: {0}")]
    BadTicket(TicketError),
    #[error("this ticket's place is gone (admitted long ago, or away past the grace period); join again")]
    TicketExpired,
}

impl JoinError {
    pub fn code(self) -> ErrorCode {
        match self {
            JoinError::BadTicket(_) => ErrorCode::BadTicket,
            JoinError::TicketExpired => ErrorCode::TicketExpired,
        }
    }
}

impl From<TicketError> for JoinError {
    fn from(e: TicketError) -> JoinError {
        JoinError::BadTicket(e)
    }
}

/// A join's answer: the frame for the browser, and where it now stands.
#[derive(Debug)]
pub struct Joined {
    pub payload: Vec<u8>,
    /// Where to find the holder again (`None`: admitted already).
    pub spot: Option<Spot>,
    /// Another connection that held this ticket until now.
    pub replaced: Option<Holder>,
}

/// One person in line. 48 bytes (pinned by a test): at 500,000 waiting,
/// 24 MB, plus the holder map's entry in `rooms::Rooms`.
#[derive(Debug)]
struct Entry {
    /// Place in line (after the opening) or arrival serial (before).
    place: u64,
    holder: Option<Holder>,
    /// Seconds since the room was created, as all times below.
    joined_s: u32,
    /// When the holder went away (meaningful while `holder` is `None`).
    gone_s: u32,
    /// Position at the last pass (1 = next to be admitted).
    pos: u32,
    /// Last position pushed, and when.
    sent_pos: u32,
    sent_s: u32,
    lost: bool,
}

impl Entry {
    fn new(place: u64, holder: Holder, s: u32) -> Entry {
        Entry {
            place,
            holder: Some(holder),
            joined_s: s,
            gone_s: 0,
            pos: 0,
            sent_pos: 0,
            sent_s: s,
            lost: false,
        }
    }

    /// Takes the entry for `holder`; returns another holder it had.
    fn hold(&mut self, holder: Holder, s: u32) -> Option<Holder> {
        self.sent_pos = self.pos;
        self.sent_s = s;
        self.holder.replace(holder).filter(|h| *h != holder)
    }
}

/// An admission not yet expired: kept to hand again to a holder who
/// reconnects, and to count against `max_admitted`.
#[derive(Debug)]
struct Outstanding {
    token: String,
    expires: u64,
    seq: u64,
}

pub struct Room {
    pub name: Arc<str>,
    /// Generation, in every ticket: a room made again under the same name
    /// does not honour the old one's tickets.
    pub epoch: u64,
    settings: Settings,
    created_ms: u64,
    opened: bool,
    /// Joins before the opening, by arrival serial.
    pre: Vec<Entry>,
    /// After the opening: arrival serial -> place.
    perm: Vec<u64>,
    line: VecDeque<Entry>,
    next_place: u64,
    /// Entries neither lost nor admitted, in `pre` and `line`.
    waiting: usize,
    /// Admissions earned and not yet made (the token bucket).
    credit: f64,
    last_tick_ms: u64,
    last_pass_s: u32,
    outstanding: HashMap<u64, Outstanding>,
    admitted_total: u64,
    rate: AdmissionRate,
    pub waits: WaitTimes,
    /// Where the next round of position updates starts (a place).
    cursor: u64,
    seed: u64,
}

/// What `GET /api/rooms/NAME` shows.
#[derive(Debug, serde::Serialize)]
pub struct View {
    pub waiting: usize,
    pub admitted: usize,
    pub admitted_total: u64,
    pub admit_per_minute: u32,
    pub opens_at: Option<u64>,
    pub max_admitted: Option<u32>,
    pub admission_ttl: u64,
    pub open: bool,
    pub median_wait_s: Option<u32>,
    pub measured_per_minute: f64,
}

impl Room {
    /// `seed` drives the pre-queue shuffle (random in service, fixed in tests).
    pub fn new(name: Arc<str>, epoch: u64, settings: Settings, now: u64, seed: u64) -> Room {
        let open_now = settings.opens_at.is_none_or(|at| now / 1000 >= at);
        let mut room = Room {
            name,
            epoch,
            settings,
            created_ms: now,
            opened: false,
            pre: Vec::new(),
            perm: Vec::new(),
            line: VecDeque::new(),
            next_place: 0,
            waiting: 0,
            credit: 0.0,
            last_tick_ms: now,
            last_pass_s: 0,
            outstanding: HashMap::new(),
            admitted_total: 0,
            rate: AdmissionRate::default(),
            waits: WaitTimes::default(),
            cursor: 0,
            seed,
        };
        if open_now {
            room.open(now);
        }
        room
    }

    fn secs(&self, now: u64) -> u32 {
        u32::try_from(now.saturating_sub(self.created_ms) / 1000).unwrap_or(u32::MAX)
    }

    /// A rate change applies at the next tick; credit saved while the old
    /// rate ran does not turn into a burst.
    pub fn update(&mut self, settings: Settings) {
        if self.opened {
            // The shuffle has happened; moving the opening means nothing now.
            self.settings = Settings {
                opens_at: self.settings.opens_at,
                ..settings
            };
        } else {
            self.settings = settings;
        }
        self.credit = self.credit.min(IDLE_CREDIT);
    }

    pub fn view(&self, now: u64) -> View {
        View {
            waiting: self.waiting,
            admitted: self.outstanding.len(),
            admitted_total: self.admitted_total,
            admit_per_minute: self.settings.admit_per_minute,
            opens_at: self.settings.opens_at,
            max_admitted: self.settings.max_admitted,
            admission_ttl: self.settings.admission_ttl,
            open: self.opened,
            median_wait_s: self.waits.median(),
            measured_per_minute: self.rate.per_second(now / 1000) * 60.0,
        }
    }

    /// A join: a fresh place (no ticket), or the place a ticket holds.
    pub fn join(
        &mut self,
        key: &TokenKey,
        ticket: Option<&str>,
        holder: Holder,
        now: u64,
    ) -> Result<Joined, JoinError> {
        let s = self.secs(now);
        let Some(ticket) = ticket else {
            return Ok(self.join_fresh(key, holder, now));
        };
        let (epoch, spot) = ticket::read_ticket(key, ticket, &self.name)?;
        if epoch != self.epoch {
            return Err(JoinError::BadTicket(TicketError::OtherRoom));
        }
        let place = match spot {
            Spot::Pre(serial) if !self.opened => {
                let entry = usize::try_from(serial)
                    .ok()
                    .and_then(|i| self.pre.get_mut(i))
                    .ok_or(JoinError::BadTicket(TicketError::Malformed))?;
                if entry.lost {
                    return Err(JoinError::TicketExpired);
                }
                let replaced = entry.hold(holder, s);
                let eta = self.eta(0, now);
                let payload =
                    messages::queued(&self.name, Some(ticket), None, eta, self.settings.opens_at);
                return Ok(Joined {
                    payload,
                    spot: Some(spot),
                    replaced,
                });
            }
            Spot::Pre(serial) => usize::try_from(serial)
                .ok()
                .and_then(|i| self.perm.get(i).copied())
                .ok_or(JoinError::BadTicket(TicketError::Malformed))?,
            Spot::Line(place) if place >= self.next_place => {
                return Err(JoinError::BadTicket(TicketError::Malformed))
            }
            Spot::Line(place) => place,
        };
        if let Some(entry) = self.find(place) {
            if entry.lost {
                return Err(JoinError::TicketExpired);
            }
            let replaced = entry.hold(holder, s);
            let pos = entry.pos;
            let payload = messages::queued(
                &self.name,
                Some(ticket),
                Some(pos),
                self.eta(pos, now),
                None,
            );
            return Ok(Joined {
                payload,
                spot: Some(Spot::Line(place)),
                replaced,
            });
        }
        match self.outstanding.get(&place) {
            Some(a) => Ok(Joined {
                payload: messages::admitted(&self.name, &a.token, a.expires, a.seq),
                spot: None,
                replaced: None,
            }),
            None => Err(JoinError::TicketExpired),
        }
    }

    fn join_fresh(&mut self, key: &TokenKey, holder: Holder, now: u64) -> Joined {
        let s = self.secs(now);
        self.waiting += 1;
        if !self.opened {
            let spot = Spot::Pre(self.pre.len() as u64);
            self.pre.push(Entry::new(self.pre.len() as u64, holder, s));
            let ticket = ticket::mint_ticket(key, &self.name, self.epoch, spot);
            let payload = messages::queued(
                &self.name,
                Some(&ticket),
                None,
                self.eta(0, now),
                self.settings.opens_at,
            );
            return Joined {
                payload,
                spot: Some(spot),
                replaced: None,
            };
        }
        let place = self.next_place;
        self.next_place += 1;
        // Exact: every live entry is ahead of the newest.
        let pos = u32::try_from(self.waiting).unwrap_or(u32::MAX);
        let mut entry = Entry::new(place, holder, s);
        entry.pos = pos;
        entry.sent_pos = pos;
        self.line.push_back(entry);
        let spot = Spot::Line(place);
        let ticket = ticket::mint_ticket(key, &self.name, self.epoch, spot);
        let payload = messages::queued(
            &self.name,
            Some(&ticket),
            Some(pos),
            self.eta(pos, now),
            None,
        );
        Joined {
            payload,
            spot: Some(spot),
            replaced: None,
        }
    }

    /// The holder's connection is gone: its place is kept for the grace
    /// period, counted from now.
    pub fn leave(&mut self, spot: Spot, holder: Holder, now: u64) {
        let s = self.secs(now);
        let entry = match spot {
            Spot::Pre(serial) if !self.opened => usize::try_from(serial)
                .ok()
                .and_then(|i| self.pre.get_mut(i)),
            Spot::Pre(serial) => {
                match usize::try_from(serial)
                    .ok()
                    .and_then(|i| self.perm.get(i).copied())
                {
                    Some(place) => self.find(place),
                    None => None,
                }
            }
            Spot::Line(place) => self.find(place),
        };
        if let Some(entry) = entry.filter(|e| e.holder == Some(holder)) {
            entry.holder = None;
            entry.gone_s = s;
        }
    }

    fn find(&mut self, place: u64) -> Option<&mut Entry> {
        let i = self.line.binary_search_by_key(&place, |e| e.place).ok()?;
        self.line.get_mut(i)
    }

    /// Seconds until `position` is admitted at the measured rate (before
    /// the opening: until the opening).
    fn eta(&self, position: u32, now: u64) -> Option<u64> {
        if !self.opened {
            return self
                .settings
                .opens_at
                .map(|at| at.saturating_sub(now / 1000));
        }
        let mut per_s = self.rate.per_second(now / 1000);
        if per_s <= 0.0 {
            per_s = f64::from(self.settings.admit_per_minute) / 60.0;
        }
        (per_s > 0.0).then(|| (f64::from(position) / per_s).ceil() as u64)
    }

    /// Closes the room: everyone still waiting is told why.
    pub fn close(self, reason: &str) -> Vec<Push> {
        let payload = messages::error(&self.name, ErrorCode::RoomClosed, reason);
        self.pre
            .iter()
            .chain(self.line.iter())
            .filter(|e| !e.lost)
            .filter_map(|e| e.holder)
            .map(|holder| Push {
                holder,
                payload: payload.clone(),
                done: true,
            })
            .collect()
    }

    /// The ticket for `spot` (the one its holder was given: minting is
    /// deterministic).
    pub fn ticket_for(&self, key: &TokenKey, spot: Spot) -> String {
        ticket::mint_ticket(key, &self.name, self.epoch, spot)
    }

    /// Checks an admission token for this room (and this generation of it).
    pub fn verify(&self, key: &TokenKey, token: &str, now: u64) -> Result<Admission, TicketError> {
        let a = ticket::read_admission(key, token, &self.name, now / 1000)?;
        if a.epoch != self.epoch {
            return Err(TicketError::OtherRoom);
        }
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    /// Pinned so a person in line cannot silently grow: at 500,000
    /// waiting, each byte here is half a megabyte.
    #[test]
    fn an_entry_in_line_stays_within_48_bytes() {
        assert!(std::mem::size_of::<super::Entry>() <= 48);
    }
}
