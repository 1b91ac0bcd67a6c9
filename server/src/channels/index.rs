//! One worker's channel -> subscribers index.
//!
//! Each channel holds a dense `Vec` of connection tokens; each connection holds
//! (channel, position) pairs pointing back into those vectors. Subscribe,
//! unsubscribe and disconnect are O(1) in the number of subscribers: removal
//! is a swap-remove, and the one entry that moved has its back-pointer fixed.
//! It must not write to sockets; fan-out reads `subscribers` and does that.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

use compact_str::CompactString;
use hashbrown::HashTable;
use slab::Slab;
use smallvec::SmallVec;

use crate::core::conn::{Conn, Sub};

/// A channel with at least one subscriber on this worker.
pub struct Channel {
    /// Names up to 24 bytes (`user/12345678`, `clinic:42/slots`) live inline:
    /// a private channel per user then costs no heap block for its name.
    pub name: CompactString,
    /// Tokens of subscribed connections, in no particular order. Up to four
    /// live inline in the same 24 bytes a `Vec` header takes, so a private
    /// `user/ID` channel (one subscriber) costs no heap block for its list.
    pub subscribers: SmallVec<[u32; 4]>,
}

/// A subscription whose answer (`subscribed`, replay or snapshot) waits for
/// the engine to know the channel (see `Command::Ready`).
#[derive(Debug)]
pub struct Waiting {
    pub token: u32,
    /// The position the browser asked to recover from: (epoch, offset).
    pub since: Option<(Box<str>, u64)>,
}

/// The connection already holds the most subscriptions it may.
#[derive(Debug, PartialEq, Eq)]
pub struct TooManySubscriptions;

/// Name -> channel lookup is a table of bare `u32` ids hashed by the name
/// stored once in the slab: 5 bytes a bucket instead of a map's 24-byte
/// (name, id) pairs, which matters when every user has a private channel.
/// Channel names come from browsers, so hashing is std's keyed SipHash: a
/// hostile client must not be able to pick names that collide.
#[derive(Default)]
pub struct ChannelIndex {
    by_name: HashTable<u32>,
    hasher: RandomState,
    channels: Slab<Channel>,
    /// Channel id -> subscriptions waiting for the engine. Empty with the
    /// in-process engine, so a disconnect only tests `is_empty`; kept out
    /// of `Channel` so a million private channels do not pay for it.
    waiting: HashMap<u32, Vec<Waiting>>,
    /// Channels that lost their last subscriber since the worker last
    /// looked: the engine may stop following them.
    emptied: Vec<CompactString>,
}

impl ChannelIndex {
    fn find(&self, name: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(name);
        self.by_name
            .find(hash, |&id| {
                self.channels
                    .get(id as usize)
                    .is_some_and(|c| &*c.name == name)
            })
            .copied()
    }

    /// The channel called `name`, if anyone on this worker subscribes to it.
    pub fn get(&self, name: &str) -> Option<&Channel> {
        self.channels.get(self.find(name)? as usize)
    }

    /// Channels with subscribers on this worker.
    pub fn len(&self) -> usize {
        self.channels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// Subscribes connection `token` to `name`. Returns `Ok(false)` when it
    /// was already subscribed (nothing changes, so no duplicate deliveries).
    pub fn subscribe(
        &mut self,
        conns: &mut Slab<Conn>,
        token: u32,
        name: &str,
        max_per_conn: usize,
    ) -> Result<bool, TooManySubscriptions> {
        let Some(conn) = conns.get_mut(token as usize) else {
            return Ok(false);
        };
        let existing = self.find(name);
        if let Some(id) = existing {
            if conn.subs.iter().any(|s| s.channel == id) {
                return Ok(false);
            }
        }
        if conn.subs.len() >= max_per_conn {
            return Err(TooManySubscriptions);
        }
        let id = match existing {
            Some(id) => id,
            None => {
                let id = self.channels.insert(Channel {
                    name: CompactString::new(name),
                    subscribers: SmallVec::new(),
                }) as u32;
                let (hasher, channels) = (&self.hasher, &self.channels);
                self.by_name
                    .insert_unique(hasher.hash_one(name), id, |&other| {
                        hasher.hash_one(channels.get(other as usize).map_or("", |c| &*c.name))
                    });
                id
            }
        };
        let channel = &mut self.channels[id as usize];
        conn.subs.push(Sub {
            channel: id,
            pos: channel.subscribers.len() as u32,
        });
        channel.subscribers.push(token);
        Ok(true)
    }

    /// Unsubscribes `token` from `name`; `false` if it was not subscribed.
    pub fn unsubscribe(&mut self, conns: &mut Slab<Conn>, token: u32, name: &str) -> bool {
        let Some(id) = self.find(name) else {
            return false;
        };
        let Some(conn) = conns.get_mut(token as usize) else {
            return false;
        };
        let Some(slot) = conn.subs.iter().position(|s| s.channel == id) else {
            return false;
        };
        let sub = conn.subs.swap_remove(slot);
        self.detach(conns, sub);
        true
    }

    /// Parks `token`'s answer for `name` until the engine knows the channel.
    pub fn wait(&mut self, name: &str, waiting: Waiting) {
        if let Some(id) = self.find(name) {
            self.waiting.entry(id).or_default().push(waiting);
        }
    }

    /// The subscriptions to `name` that waited for the engine.
    pub fn take_waiting(&mut self, name: &str) -> Vec<Waiting> {
        match self.find(name) {
            Some(id) => self.waiting.remove(&id).unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// Channels emptied since the last call.
    pub fn take_emptied(&mut self) -> Vec<CompactString> {
        std::mem::take(&mut self.emptied)
    }

    /// Removes every subscription of `token` (on disconnect).
    pub fn unsubscribe_all(&mut self, conns: &mut Slab<Conn>, token: u32) {
        while let Some(sub) = conns.get_mut(token as usize).and_then(|c| c.subs.pop()) {
            self.detach(conns, sub);
        }
    }

    /// Takes one (already removed) back-pointer's entry out of its channel.
    fn detach(&mut self, conns: &mut Slab<Conn>, sub: Sub) {
        let Some(channel) = self.channels.get_mut(sub.channel as usize) else {
            return;
        };
        let pos = sub.pos as usize;
        if pos >= channel.subscribers.len() {
            return;
        }
        let token = channel.subscribers.swap_remove(pos);
        if !self.waiting.is_empty() {
            if let Some(list) = self.waiting.get_mut(&sub.channel) {
                list.retain(|w| w.token != token);
                if list.is_empty() {
                    self.waiting.remove(&sub.channel);
                }
            }
        }
        if let Some(&moved) = channel.subscribers.get(pos) {
            let back = conns
                .get_mut(moved as usize)
                .and_then(|c| c.subs.iter_mut().find(|s| s.channel == sub.channel));
            if let Some(back) = back {
                back.pos = sub.pos;
            }
        }
        if channel.subscribers.is_empty() {
            let channel = self.channels.remove(sub.channel as usize);
            self.waiting.remove(&sub.channel);
            let hash = self.hasher.hash_one(&*channel.name);
            if let Ok(entry) = self.by_name.find_entry(hash, |&id| id == sub.channel) {
                entry.remove();
            }
            self.emptied.push(channel.name);
        } else if channel.subscribers.spilled()
            && channel.subscribers.capacity() > 4 * channel.subscribers.len()
        {
            // After a mass disconnect, give memory back instead of keeping
            // the peak's capacity for every channel forever.
            channel.subscribers.shrink_to_fit();
        }
    }
}
