//! One room driven by a clock of the tests' own: tables of joins, ticks and
//! what must come out.

use serde_json::Value;

use crate::channels::token::TokenKey;
use crate::rooms::room::{
    Holder, JoinError, Push, Room, Settings, MAX_UPDATES_PER_SECOND, UPDATE_INTERVAL_S,
};
use crate::rooms::ticket::TicketError;

const T0: u64 = 1_700_000_000_000;
const GRACE: u32 = 30;

fn key() -> TokenKey {
    TokenKey::new(b"a room secret of some length").unwrap()
}

fn settings(per_minute: u32) -> Settings {
    Settings {
        admit_per_minute: per_minute,
        opens_at: None,
        max_admitted: None,
        admission_ttl: 60,
    }
}

fn holder(i: u32) -> Holder {
    Holder {
        worker: 0,
        gen: 1,
        token: i,
    }
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

/// A room and its clock; `pushes` collects every push so far.
struct Bench {
    room: Room,
    key: TokenKey,
    now: u64,
    pushes: Vec<Push>,
}

impl Bench {
    fn new(s: Settings) -> Bench {
        Bench {
            room: Room::new("sale".into(), 7, s, T0, 42),
            key: key(),
            now: T0,
            pushes: Vec::new(),
        }
    }

    fn join(&mut self, i: u32, ticket: Option<&str>) -> Result<Value, JoinError> {
        let joined = self.room.join(&self.key, ticket, holder(i), self.now)?;
        Ok(json(&joined.payload))
    }

    fn ticket(&mut self, i: u32) -> String {
        self.join(i, None).unwrap()["ticket"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Advances the clock in 100 ms ticks.
    fn run_ms(&mut self, ms: u64) {
        for _ in 0..ms / 100 {
            self.now += 100;
            self.room.tick(&self.key, GRACE, self.now, &mut self.pushes);
        }
    }

    /// Holders admitted so far, in admission order.
    fn admitted(&self) -> Vec<u32> {
        self.pushes
            .iter()
            .filter(|p| json(&p.payload)["op"] == "admitted")
            .map(|p| p.holder.token)
            .collect()
    }
}

#[test]
fn admission_is_fifo_and_smooth_at_the_configured_rate() {
    let mut b = Bench::new(settings(600));
    b.run_ms(100);
    for i in 0..50 {
        b.join(i, None).unwrap();
    }
    // 600 a minute is one per 100 ms tick: never a burst.
    for second in 1..=3u32 {
        let before = b.admitted().len();
        for _ in 0..10 {
            let n = b.admitted().len();
            b.run_ms(100);
            assert!(b.admitted().len() - n <= 1);
        }
        assert_eq!(b.admitted().len() - before, 10, "second {second}");
    }
    assert_eq!(b.admitted(), (0..30).collect::<Vec<_>>());
    let seqs: Vec<u64> = b
        .pushes
        .iter()
        .map(|p| json(&p.payload))
        .filter(|v| v["op"] == "admitted")
        .map(|v| v["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=30).collect::<Vec<_>>());
}

#[test]
fn pre_queue_is_shuffled_at_the_opening_then_fifo() {
    let mut s = settings(60_000);
    s.opens_at = Some(T0 / 1000 + 10);
    let mut b = Bench::new(s);
    for i in 0..100 {
        let v = b.join(i, None).unwrap();
        assert_eq!(v["position"], Value::Null, "no position before the opening");
        assert_eq!(v["opens_at"], T0 / 1000 + 10);
    }
    b.run_ms(9_000);
    assert!(b.admitted().is_empty(), "nobody before the opening");
    b.run_ms(1_000);
    for i in 100..110 {
        b.join(i, None).unwrap();
    }
    b.run_ms(1_000);
    let order = b.admitted();
    assert_eq!(order.len(), 110);
    let (early, late) = order.split_at(100);
    let mut sorted = early.to_vec();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..100).collect::<Vec<_>>(),
        "each early joiner once"
    );
    assert_ne!(early, &sorted[..], "early joiners are shuffled");
    assert_eq!(
        late,
        (100..110).collect::<Vec<_>>(),
        "then first come, first served"
    );
}

#[test]
fn a_ticket_keeps_its_place_within_the_grace_period_only() {
    let mut b = Bench::new(settings(0));
    let tickets: Vec<String> = (0..5).map(|i| b.ticket(i)).collect();
    b.room
        .leave(crate::rooms::ticket::Spot::Line(2), holder(2), b.now);
    b.run_ms(u64::from(GRACE) * 1000);
    // Back within the grace period, on another connection: same place.
    let v = b.join(20, Some(&tickets[2])).unwrap();
    assert_eq!(v["position"], 3);
    assert_eq!(v["ticket"], tickets[2].as_str());
    // Gone longer than the grace period: the place is lost.
    b.room
        .leave(crate::rooms::ticket::Spot::Line(3), holder(3), b.now);
    b.run_ms(u64::from(GRACE) * 1000 + 2000);
    assert_eq!(b.join(30, Some(&tickets[3])), Err(JoinError::TicketExpired));
    assert_eq!(b.room.view(b.now).waiting, 4);
    // Those behind moved up.
    b.run_ms(UPDATE_INTERVAL_S as u64 * 1000);
    let last = b
        .pushes
        .iter()
        .rev()
        .find(|p| p.holder == holder(4))
        .unwrap();
    assert_eq!(json(&last.payload)["position"], 4);
}

#[test]
fn forged_altered_and_foreign_tickets_are_refused() {
    let mut b = Bench::new(settings(0));
    let t = b.ticket(0);
    let mut other = Room::new("other".into(), 7, settings(0), T0, 1);
    let foreign = json(&other.join(&key(), None, holder(9), T0).unwrap().payload)["ticket"]
        .as_str()
        .unwrap()
        .to_string();
    let mut recreated = Room::new("sale".into(), 8, settings(0), T0, 1);
    let old_generation = json(&recreated.join(&key(), None, holder(9), T0).unwrap().payload)
        ["ticket"]
        .as_str()
        .unwrap()
        .to_string();
    let forged = TokenKey::new(b"not the server's secret, no")
        .unwrap()
        .sign(t.rsplit_once('.').unwrap().0);
    let cases = [
        (t.replacen(".0.", ".1.", 1), TicketError::BadSignature),
        (forged, TicketError::BadSignature),
        (foreign, TicketError::OtherRoom),
        (old_generation, TicketError::OtherRoom),
        ("nonsense".to_string(), TicketError::Malformed),
    ];
    for (ticket, why) in cases {
        assert_eq!(
            b.join(1, Some(&ticket)),
            Err(JoinError::BadTicket(why)),
            "{ticket}"
        );
    }
}

#[test]
fn max_admitted_holds_and_expired_admissions_free_places() {
    let mut s = settings(6_000);
    s.max_admitted = Some(3);
    s.admission_ttl = 5;
    let mut b = Bench::new(s);
    for i in 0..10 {
        b.join(i, None).unwrap();
    }
    b.run_ms(4_000);
    assert_eq!(b.admitted().len(), 3);
    assert_eq!(b.room.view(b.now).admitted, 3);
    // The first three expire unused 5 s after admission: three more.
    b.run_ms(3_000);
    assert_eq!(b.admitted().len(), 6);
    assert!(b.room.view(b.now).admitted <= 3);
}

#[test]
fn a_rate_change_applies_at_once_without_a_burst() {
    let mut b = Bench::new(settings(0));
    for i in 0..100 {
        b.join(i, None).unwrap();
    }
    b.run_ms(5_000);
    assert!(b.admitted().is_empty());
    b.room.update(settings(1_200));
    b.run_ms(1_000);
    assert_eq!(b.admitted().len(), 20);
    b.room.update(settings(0));
    b.run_ms(2_000);
    assert_eq!(b.admitted().len(), 20);
}

#[test]
fn an_admitted_ticket_gets_its_admission_again_then_nothing() {
    let mut b = Bench::new(settings(600));
    let t = b.ticket(0);
    b.run_ms(200);
    let first = json(&b.pushes[0].payload);
    assert_eq!(first["op"], "admitted");
    let again = b.join(5, Some(&t)).unwrap();
    assert_eq!(again, first, "the same admission, not a second one");
    b.run_ms(61_000);
    assert_eq!(b.join(5, Some(&t)), Err(JoinError::TicketExpired));
    assert_eq!(b.admitted().len(), 1);
}

#[test]
fn positions_only_fall_and_updates_are_coalesced() {
    let mut b = Bench::new(settings(600));
    let mut last: Vec<u64> = Vec::new();
    for i in 0..100 {
        last.push(b.join(i, None).unwrap()["position"].as_u64().unwrap());
    }
    let mut heard: Vec<Vec<u64>> = vec![Vec::new(); 100];
    b.run_ms(12_000);
    for p in &b.pushes {
        let v = json(&p.payload);
        if v["op"] == "queued" {
            let pos = v["position"].as_u64().unwrap();
            let i = p.holder.token as usize;
            assert!(pos < last[i], "holder {i}: {pos} after {}", last[i]);
            last[i] = pos;
            heard[i].push(pos);
        }
    }
    // 12 s, at most one update per interval: at most 4 each.
    let most = heard.iter().map(Vec::len).max().unwrap();
    assert!(most as u32 <= 12 / UPDATE_INTERVAL_S, "{most}");
    assert!(most >= 3, "positions are pushed: {most}");
}

#[test]
fn a_huge_room_pushes_within_its_budget_and_reaches_everyone() {
    let mut b = Bench::new(settings(60_000));
    let n = MAX_UPDATES_PER_SECOND as u32 * 3 / 2;
    for i in 0..n {
        b.join(i, None).unwrap();
    }
    let mut told = vec![false; n as usize];
    for _ in 0..6 {
        let before = b.pushes.len();
        b.run_ms(1_000);
        let queued = b.pushes[before..]
            .iter()
            .filter(|p| json(&p.payload)["op"] == "queued")
            .inspect(|p| told[p.holder.token as usize] = true)
            .count();
        assert!(queued <= MAX_UPDATES_PER_SECOND, "{queued}");
    }
    let waiting = b.room.view(b.now).waiting;
    let told_waiting = told.iter().rev().take(waiting).filter(|t| **t).count();
    assert_eq!(
        told_waiting, waiting,
        "round-robin reaches the back of the line"
    );
}

#[test]
fn closing_tells_everyone_still_waiting() {
    let mut b = Bench::new(settings(600));
    for i in 0..5 {
        b.join(i, None).unwrap();
    }
    b.run_ms(100);
    let pushes = b.room.close("sold out");
    assert_eq!(pushes.len(), 4);
    for p in pushes {
        let v = json(&p.payload);
        assert_eq!(
            (v["code"].as_str(), v["message"].as_str()),
            (Some("room_closed"), Some("sold out"))
        );
    }
}

#[test]
fn verify_accepts_this_rooms_live_admissions_only() {
    let mut b = Bench::new(settings(600));
    b.join(0, None).unwrap();
    b.run_ms(100);
    let token = json(&b.pushes[0].payload)["token"]
        .as_str()
        .unwrap()
        .to_string();
    let a = b.room.verify(&b.key, &token, b.now).unwrap();
    assert_eq!((a.place, a.expires), (0, b.now / 1000 + 60));
    assert_eq!(
        b.room.verify(&b.key, &token, b.now + 61_000),
        Err(TicketError::Expired)
    );
    let other = Room::new("other".into(), 7, settings(0), T0, 1);
    assert_eq!(
        other.verify(&b.key, &token, b.now),
        Err(TicketError::OtherRoom)
    );
    let recreated = Room::new("sale".into(), 8, settings(0), T0, 1);
    assert_eq!(
        recreated.verify(&b.key, &token, b.now),
        Err(TicketError::OtherRoom)
    );
    let altered = token.replacen(".0.", ".1.", 1);
    assert_eq!(
        b.room.verify(&b.key, &altered, b.now),
        Err(TicketError::BadSignature)
    );
}

#[test]
fn joining_again_on_one_connection_keeps_one_place() {
    let defaults = crate::rooms::Defaults {
        grace_s: GRACE,
        admission_ttl_s: 60,
    };
    let rooms = crate::rooms::Rooms::new(Some(key()), defaults, None);
    rooms.put("sale", settings(0), T0).unwrap();
    let first = json(&rooms.join("sale", None, holder(1), T0).unwrap_or_default());
    for _ in 0..5 {
        let again = json(&rooms.join("sale", None, holder(1), T0).unwrap_or_default());
        assert_eq!(again["ticket"], first["ticket"]);
        assert_eq!(again["position"], 1);
    }
    let other = json(&rooms.join("sale", None, holder(2), T0).unwrap_or_default());
    assert_eq!(other["position"], 2);
    assert_eq!(rooms.view("sale", T0).unwrap().waiting, 2);
}
