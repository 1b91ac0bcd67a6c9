//! What a big waiting room costs the rooms ticker, in-process: N people in
//! one room (default 500,000), time passing in 100 ms ticks at 600
//! admissions a minute. Reports the memory per person in line, the time a
//! once-a-second pass (count positions, choose updates) holds the rooms'
//! lock, as a ratio to the floor of merely walking N entries of the same
//! size, and the position updates chosen per second.
//!
//! cargo run --release -p server --example room_cost -- 500000

use std::hint::black_box;
use std::time::{Duration, Instant};

use surge::channels::token::TokenKey;
use surge::rooms::room::{Holder, Room, Settings};

fn rss_bytes() -> u64 {
    surge::core::sys::resident_bytes().unwrap_or(0)
}

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(500_000);
    let key = TokenKey::new(b"room cost secret, long enough").expect("key");
    let settings = Settings {
        admit_per_minute: 600,
        opens_at: None,
        max_admitted: None,
        admission_ttl: 600,
    };
    let t0 = 1_700_000_000_000u64;
    let before = rss_bytes();
    let mut room = Room::new("sale".into(), 1, settings, t0, 7);
    for i in 0..n {
        let holder = Holder {
            worker: (i % 2) as u16,
            gen: 1,
            token: i,
        };
        black_box(room.join(&key, None, holder, t0).expect("join"));
    }
    let per_person = (rss_bytes().saturating_sub(before)) as f64 / f64::from(n);

    // Floor: walking N 48-byte records once, touching each.
    let floor_data: Vec<[u64; 6]> = (0..u64::from(n)).map(|i| [i; 6]).collect();
    let mut floor = Vec::new();
    for _ in 0..10 {
        let start = Instant::now();
        let mut sum = 0u64;
        for e in &floor_data {
            sum = sum.wrapping_add(e[0] ^ e[5]);
        }
        black_box(sum);
        floor.push(start.elapsed());
    }

    let mut passes = Vec::new();
    let mut updates = Vec::new();
    let mut now = t0;
    let mut out = Vec::new();
    for _ in 0..20 {
        for _ in 0..10 {
            now += 100;
            out.clear();
            let start = Instant::now();
            room.tick(&key, 120, now, &mut out);
            let took = start.elapsed();
            // Only the tick that crossed into a new second made a pass.
            if now.is_multiple_of(1000) {
                passes.push(took);
                updates.push(out.len());
            }
        }
    }
    passes.sort();
    floor.sort();
    let median = |v: &[Duration]| v.get(v.len() / 2).copied().unwrap_or_default();
    let pass = median(&passes);
    let walk = median(&floor);
    println!("people in line            {n}");
    println!(
        "memory per person         {per_person:.0} bytes (RSS delta, entries only, no sockets)"
    );
    println!(
        "pass (lock held)          median {:.2} ms, max {:.2} ms over {} passes",
        pass.as_secs_f64() * 1e3,
        passes.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        passes.len()
    );
    println!(
        "floor (walk N records)    median {:.2} ms; pass/floor = {:.1}x",
        walk.as_secs_f64() * 1e3,
        pass.as_secs_f64() / walk.as_secs_f64().max(1e-9)
    );
    println!(
        "updates chosen per pass   max {} (budget {})",
        updates.iter().max().copied().unwrap_or(0),
        surge::rooms::room::MAX_UPDATES_PER_SECOND
    );
}
