//! Connections per source address, shared by every worker: the count
//! behind `--max-connections-per-ip`. SO_REUSEPORT spreads one address's
//! connections over all workers, so the count must be global; it is a fixed
//! table of atomic counters indexed by a keyed hash of the address, so
//! counting is one uncontended add at accept and one at close, and the
//! table costs the same 256 KiB at ten connections or a million.
//!
//! A connection keeps its bucket number (two bytes in `Conn`), so closing
//! never needs the peer's address again (a reset socket may not tell it).

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::limits::ADDRESS_BUCKETS;

/// Connection counts by hashed source address.
pub struct AddressCounts {
    buckets: Box<[AtomicU32]>,
    /// Keyed at random per process: an attacker cannot choose addresses
    /// that land in a neighbour's bucket.
    hasher: RandomState,
}

impl Default for AddressCounts {
    fn default() -> Self {
        AddressCounts {
            buckets: (0..ADDRESS_BUCKETS).map(|_| AtomicU32::new(0)).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl AddressCounts {
    /// The bucket of `ip`. An IPv6 address counts by its /64: one
    /// subscriber is given a whole /64 and can pick any address in it.
    pub fn bucket(&self, ip: IpAddr) -> u16 {
        let key: u128 = match ip {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => u128::from(u32::from(v4)),
                None => u128::from(v6) >> 64 | 1 << 127,
            },
        };
        // ADDRESS_BUCKETS is 2^16: the low 16 bits of the hash are the index.
        (self.hasher.hash_one(key) as usize % ADDRESS_BUCKETS) as u16
    }

    /// Counts one more connection in `bucket` unless it already holds `cap`
    /// (0: no cap). Returns whether it was counted.
    pub fn try_add(&self, bucket: u16, cap: usize) -> bool {
        let counter = &self.buckets[usize::from(bucket)];
        let before = counter.fetch_add(1, Ordering::Relaxed);
        if cap != 0 && before as usize >= cap {
            counter.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Releases a connection counted by [`AddressCounts::try_add`].
    pub fn release(&self, bucket: u16) {
        self.buckets[usize::from(bucket)].fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_capped_and_released() {
        let counts = AddressCounts::default();
        let b = counts.bucket("192.0.2.7".parse().unwrap());
        assert!(counts.try_add(b, 2) && counts.try_add(b, 2));
        assert!(!counts.try_add(b, 2), "third over a cap of two");
        counts.release(b);
        assert!(counts.try_add(b, 2));
        assert!((0..10).all(|_| counts.try_add(b, 0)), "0 means no cap");
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_v4_as_v4() {
        let counts = AddressCounts::default();
        let a = counts.bucket("2001:db8:1:2::1".parse().unwrap());
        let b = counts.bucket("2001:db8:1:2:ffff::9".parse().unwrap());
        assert_eq!(a, b);
        let v4 = counts.bucket("198.51.100.4".parse().unwrap());
        let mapped = counts.bucket("::ffff:198.51.100.4".parse().unwrap());
        assert_eq!(v4, mapped);
    }
}
