//! The thread that makes time pass for every room: admissions every tick,
//! positions once a second (see `room.rs`). It owns no state of its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::rooms::{now_ms, Rooms};

/// Time between admission rounds: at 600 a minute a tick admits one
/// person, at 60,000 a minute a hundred; either way admissions leave
/// evenly through the second, not in a burst.
pub const TICK: Duration = Duration::from_millis(100);

/// The running ticker thread.
pub struct Ticker {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

impl Ticker {
    pub fn spawn(rooms: Arc<Rooms>) -> std::io::Result<Ticker> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let handle = std::thread::Builder::new()
            .name("surge-rooms".into())
            .spawn(move || {
                while !stopping.load(Ordering::Relaxed) {
                    std::thread::park_timeout(TICK);
                    rooms.tick(now_ms());
                }
            })?;
        Ok(Ticker { stop, handle })
    }

    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.thread().unpark();
        if self.handle.join().is_err() {
            tracing::error!("the rooms ticker panicked");
        }
    }
}
