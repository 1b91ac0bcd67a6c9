//! One worker's channel -> subscribers index.
//!
//! Each channel holds a dense `Vec` of connection tokens; each connection holds
//! (channel, position) pairs pointing back into those vectors. Subscribe,
//! unsubscribe and disconnect are O(1) in the number of subscribers: removal
//! is a swap-remove, and the one entry that moved has its back-pointer fixed.
//! It must not write to sockets; fan-out reads `subscribers` and does that.

use std::collections::HashMap;
use std::sync::Arc;

use slab::Slab;

use crate::core::conn::{Conn, Sub};

/// A channel with at least one subscriber on this worker.
pub struct Channel {
    pub name: Arc<str>,
    /// Tokens of subscribed connections, in no particular order.
    pub subscribers: Vec<u32>,
}

/// The connection already holds the most subscriptions it may.
#[derive(Debug, PartialEq, Eq)]
pub struct TooManySubscriptions;

/// Channel names come from browsers, so the map keeps std's keyed SipHash:
/// a hostile client must not be able to pick names that collide.
#[derive(Default)]
pub struct ChannelIndex {
    by_name: HashMap<Arc<str>, u32>,
    channels: Slab<Channel>,
}

impl ChannelIndex {
    /// The channel called `name`, if anyone on this worker subscribes to it.
    pub fn get(&self, name: &str) -> Option<&Channel> {
        let id = *self.by_name.get(name)?;
        self.channels.get(id as usize)
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
        let existing = self.by_name.get(name).copied();
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
                let name: Arc<str> = Arc::from(name);
                let id = self.channels.insert(Channel {
                    name: name.clone(),
                    subscribers: Vec::with_capacity(1),
                }) as u32;
                self.by_name.insert(name, id);
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
        let Some(&id) = self.by_name.get(name) else {
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
        channel.subscribers.swap_remove(pos);
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
            self.by_name.remove(&channel.name);
        } else if channel.subscribers.capacity() > 4 * channel.subscribers.len() {
            // After a mass disconnect, give memory back instead of keeping
            // the peak's capacity for every channel forever.
            let keep = channel.subscribers.len() * 2;
            channel.subscribers.shrink_to(keep);
        }
    }
}
