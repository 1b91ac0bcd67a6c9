//! The worker's side of the waiting room: a `join` command, pushes from
//! the ticker, and telling the rooms when a connection that joined closes.
//! The only per-connection trace is the `IN_ROOM` flag bit in `Conn::flags`;
//! places live in `rooms::Rooms`, keyed by (worker, slab token).

use bytes::Bytes;

use crate::core::conn::{flag, State};
use crate::core::worker::Worker;
use crate::rooms::now_ms;
use crate::rooms::room::Holder;

impl Worker {
    fn holder(&self, token: usize) -> Holder {
        Holder {
            // Workers are numbered from 0 to at most a few hundred.
            worker: u16::try_from(self.id).unwrap_or(u16::MAX),
            gen: self.conns.get(token).map_or(0, |c| c.lease_gen),
            token: token as u32,
        }
    }

    /// `{"op":"join","room":R[,"ticket":T]}`.
    pub(crate) fn join_room(&mut self, token: usize, room: &str, ticket: Option<&str>) {
        let reply = self.rooms.join(room, ticket, self.holder(token), now_ms());
        if let Some(conn) = self.conns.get_mut(token) {
            conn.set(flag::IN_ROOM);
        }
        // With Redis the answer comes later, as a room frame in the inbox.
        if let Some(reply) = reply {
            self.send_text(token, reply);
        }
    }

    /// Frames the ticker chose for connections of this worker. A frame for
    /// a connection that has left (closing, closed, its slot reused) is
    /// dropped.
    pub(crate) fn on_room_frames(&mut self, frames: Vec<(u32, u16, Bytes)>) {
        for (token, gen, frame) in frames {
            let wanted = self.conns.get(token as usize).is_some_and(|c| {
                c.state == State::Open && c.has(flag::IN_ROOM) && c.lease_gen == gen
            });
            if wanted {
                self.send(token as usize, frame);
            }
        }
    }

    /// The connection is ending: its place stays (for the grace period),
    /// but pushes to it stop.
    pub(crate) fn leave_rooms(&mut self, token: usize) {
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        if conn.has(flag::IN_ROOM) {
            conn.clear(flag::IN_ROOM);
            self.rooms.leave(self.holder(token), now_ms());
        }
    }
}
