//! When private subscriptions end: each lasts until its token's expiry,
//! unless the browser refreshes it with a newer token first. One min-heap
//! of leases per worker, holding only private subscriptions (a public one
//! costs nothing here); the worker's once-a-second check looks only at what
//! is due. A lease is ~40 bytes (a channel name of up to 24 bytes sits
//! inline), paid only by connections that hold a private channel.
//!
//! Leases are never removed in place. One that no longer applies is
//! dropped when it comes up: its connection is gone (the slot's generation
//! changed), or a later lease for the same connection and channel exists
//! (`latest`, kept only for subscriptions whose lease changed: refreshed,
//! or left and taken again).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use compact_str::CompactString;
use hashbrown::HashMap;

/// One private subscription's end, ordered by expiry.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lease {
    /// Unix seconds; the token is valid through this second.
    pub expires: u64,
    pub conn: u32,
    /// The connection's generation (`Conn::lease_gen`): a lease of a closed
    /// connection must not end a newer one in the same slot.
    pub gen: u16,
    pub channel: CompactString,
}

/// The private subscriptions of one worker and when they end.
#[derive(Default)]
pub struct Expiries {
    heap: BinaryHeap<Reverse<Lease>>,
    /// (connection, channel) -> the expiry of its current lease, for the
    /// rare subscriptions whose lease changed; 0 after it was left.
    latest: HashMap<(u32, CompactString), u64>,
}

impl Expiries {
    /// A new private subscription (`renewed`: it replaces an earlier lease
    /// of the same connection and channel, by refresh or a repeated `sub`).
    pub fn set(&mut self, conn: u32, gen: u16, channel: &str, expires: u64, renewed: bool) {
        let channel = CompactString::from(channel);
        let key = (conn, channel.clone());
        if renewed || self.latest.contains_key(&key) {
            self.latest.insert(key, expires);
        }
        self.heap.push(Reverse(Lease {
            expires,
            conn,
            gen,
            channel,
        }));
    }

    /// The connection left a private channel it held: its leases so far are
    /// void. (One of them is still in the heap, so the mark is cleared when
    /// it comes up.)
    pub fn forget(&mut self, conn: u32, channel: &str) {
        self.latest.insert((conn, channel.into()), 0);
    }

    /// Removes and returns the leases that ended before `now` (Unix
    /// seconds) and still apply; `live(conn, gen)` says whether that
    /// connection is still the one the lease was made for.
    pub fn due(&mut self, now: u64, live: impl Fn(u32, u16) -> bool) -> Vec<Lease> {
        let mut out = Vec::new();
        while self.heap.peek().is_some_and(|l| l.0.expires < now) {
            let Some(Reverse(lease)) = self.heap.pop() else {
                break;
            };
            let key = (lease.conn, lease.channel.clone());
            let current = match self.latest.get(&key) {
                None => true,
                Some(&latest) if latest > lease.expires => continue,
                Some(&latest) => {
                    self.latest.remove(&key);
                    latest == lease.expires
                }
            };
            if current && live(lease.conn, lease.gen) {
                out.push(lease);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(e: &mut Expiries, now: u64) -> Vec<(u32, String)> {
        e.due(now, |conn, gen| gen == conn as u16)
            .into_iter()
            .map(|l| (l.conn, l.channel.to_string()))
            .collect()
    }

    #[test]
    fn leases_end_at_expiry_unless_renewed_left_or_their_connection_gone() {
        let mut e = Expiries::default();
        e.set(1, 1, "user/1", 100, false);
        e.set(2, 2, "user/2", 100, false);
        e.set(2, 2, "user/2", 200, true); // refreshed
        e.set(3, 9, "user/3", 100, false); // slot 3 now holds another connection
        e.set(4, 4, "user/4", 100, false);
        e.forget(4, "user/4"); // left
        assert!(
            ended(&mut e, 100).is_empty(),
            "valid through its expiry second"
        );
        assert_eq!(ended(&mut e, 101), vec![(1, "user/1".to_string())]);
        assert_eq!(ended(&mut e, 201), vec![(2, "user/2".to_string())]);
        assert!(ended(&mut e, 10_000).is_empty());
        assert!(
            e.latest.is_empty() && e.heap.is_empty(),
            "nothing left behind"
        );
    }
}
