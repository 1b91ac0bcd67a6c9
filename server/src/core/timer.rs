//! A coarse timer wheel: one slot per second, one entry per connection.
//!
//! A timer per connection would cost a heap node and a re-arm on every
//! event; here a connection sits in exactly one slot, and activity never
//! touches the wheel. When a slot comes due the worker asks each connection
//! whether its `timer_at` is really now; entries left behind by a closed
//! connection (whose token was reused) are dropped then. Deadlines further
//! than the wheel's span go round once more.

/// Slots in the wheel: deadlines up to 64 s ahead land in their own slot.
const SLOTS: usize = 64;

pub struct TimerWheel {
    slots: Vec<Vec<u32>>,
    /// The next second whose slot has not been fired yet.
    next: u32,
}

impl TimerWheel {
    pub fn new(now: u32) -> TimerWheel {
        TimerWheel {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            next: now,
        }
    }

    /// Queues `token` to be looked at in second `at`.
    pub fn schedule(&mut self, token: u32, at: u32) {
        let at = at.max(self.next);
        self.slots[at as usize % SLOTS].push(token);
    }

    /// The seconds that have come due up to and including `now`, each with
    /// its slot's tokens (taken out of the wheel). The caller checks each
    /// token's `timer_at` against the second and reschedules as needed.
    pub fn due(&mut self, now: u32) -> Option<(u32, Vec<u32>)> {
        if self.next > now {
            return None;
        }
        let second = self.next;
        self.next += 1;
        let slot = &mut self.slots[second as usize % SLOTS];
        let tokens = std::mem::take(slot);
        Some((second, tokens))
    }

    /// Whether a connection whose deadline is `at` belongs in the slot of
    /// `second` on a later turn of the wheel (rather than being a stale
    /// entry of a closed connection whose token was reused).
    pub fn later_lap(second: u32, at: u32) -> bool {
        at > second && ((at - second) as usize).is_multiple_of(SLOTS)
    }

    /// Gives back a drained slot vector so its capacity is reused.
    pub fn recycle(&mut self, second: u32, mut tokens: Vec<u32>) {
        tokens.clear();
        let slot = &mut self.slots[second as usize % SLOTS];
        if slot.is_empty() && slot.capacity() < tokens.capacity() {
            *slot = tokens;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TimerWheel;

    #[test]
    fn tokens_come_due_in_their_second_and_far_ones_wrap() {
        let mut wheel = TimerWheel::new(10);
        wheel.schedule(1, 12);
        wheel.schedule(2, 12 + 64);
        wheel.schedule(3, 5); // in the past: due at once
        let mut fired = Vec::new();
        while let Some((second, tokens)) = wheel.due(12) {
            fired.push((second, tokens));
        }
        assert_eq!(fired, vec![(10, vec![3]), (11, vec![]), (12, vec![1, 2])]);
        assert!(wheel.due(12).is_none());
        assert!(
            TimerWheel::later_lap(12, 12 + 64)
                && !TimerWheel::later_lap(12, 13)
                && !TimerWheel::later_lap(12, 12)
        );
    }
}
