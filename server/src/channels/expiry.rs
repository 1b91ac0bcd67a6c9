//! When private subscriptions end: each lasts until its token's expiry,
//! unless the browser refreshes it with a newer token first. One table per
//! worker, holding only private subscriptions (a public one costs nothing
//! here): the expiry of each, by connection, and a min-heap of deadlines so
//! the worker's once-a-second check looks only at what is due.
//!
//! Heap entries are never removed in place: a refreshed, unsubscribed or
//! closed subscription leaves a stale entry that is dropped when it comes
//! up, because the table no longer holds that deadline.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use hashbrown::HashMap;
use smallvec::SmallVec;

/// A private subscription's deadline: (expiry, connection, channel).
type Deadline = Reverse<(u64, u32, Box<str>)>;

/// One connection's private channels and their expiries (Unix seconds). A
/// browser holds one or two, so the list is inline.
type Leases = SmallVec<[(Box<str>, u64); 1]>;

/// The private subscriptions of one worker and when they end.
#[derive(Default)]
pub struct Expiries {
    /// Connection token -> its private channels.
    by_conn: HashMap<u32, Leases>,
    heap: BinaryHeap<Deadline>,
}

impl Expiries {
    /// `conn`'s subscription to `channel` now lasts until `expires`.
    pub fn set(&mut self, conn: u32, channel: &str, expires: u64) {
        let list = self.by_conn.entry(conn).or_default();
        match list.iter_mut().find(|(ch, _)| &**ch == channel) {
            Some(entry) => entry.1 = expires,
            None => list.push((channel.into(), expires)),
        }
        self.heap.push(Reverse((expires, conn, channel.into())));
    }

    /// Whether `conn` holds `channel` under a token.
    pub fn has(&self, conn: u32, channel: &str) -> bool {
        self.by_conn
            .get(&conn)
            .is_some_and(|list| list.iter().any(|(ch, _)| &**ch == channel))
    }

    /// `conn` left `channel`.
    pub fn forget(&mut self, conn: u32, channel: &str) {
        if let Some(list) = self.by_conn.get_mut(&conn) {
            list.retain(|(ch, _)| &**ch != channel);
            if list.is_empty() {
                self.by_conn.remove(&conn);
            }
        }
    }

    /// `conn` closed.
    pub fn forget_conn(&mut self, conn: u32) {
        self.by_conn.remove(&conn);
    }

    /// Removes and returns every subscription whose token expired before
    /// `now` (Unix seconds), as a token is valid through its expiry second.
    pub fn due(&mut self, now: u64) -> Vec<(u32, Box<str>)> {
        let mut out = Vec::new();
        while let Some(Reverse((expires, conn, _))) = self.heap.peek() {
            if *expires >= now {
                break;
            }
            let (expires, conn) = (*expires, *conn);
            let Some(Reverse((_, _, channel))) = self.heap.pop() else {
                break;
            };
            let live = self
                .by_conn
                .get(&conn)
                .is_some_and(|list| list.iter().any(|(ch, e)| *ch == channel && *e == expires));
            if live {
                self.forget(conn, &channel);
                out.push((conn, channel));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_end_at_expiry_unless_refreshed_or_gone() {
        let mut e = Expiries::default();
        e.set(1, "user/1", 100);
        e.set(2, "user/2", 100);
        e.set(3, "user/3", 100);
        e.set(2, "user/2", 200); // refreshed
        e.forget_conn(3); // closed
        assert!(e.due(100).is_empty(), "valid through its expiry second");
        assert_eq!(e.due(101), vec![(1, "user/1".into())]);
        assert!(!e.has(1, "user/1") && e.has(2, "user/2"));
        assert_eq!(e.due(201), vec![(2, "user/2".into())]);
        assert!(e.due(10_000).is_empty());
    }
}
