//! `surge --demo`: a simulated booking backend and the live slot board.
//!
//! A thread owns a few clinics' slot availability. Every so often a slot's
//! free count changes (other people booking and cancelling); the thread
//! publishes the clinic's whole state through the real publish API over
//! HTTP, exactly as a booking backend would. A booking from the page arrives
//! at `POST /demo/book`; the backend takes a place if one is left and
//! publishes the confirmation (or rejection) to the user's private channel.
//! `GET /demo/session` gives the page a user id and a signed token for it.
//! With `--demo-sale-in`, the backend first makes a waiting room ("the sale
//! opens at ..."): the page waits in it, and a booking needs an admission,
//! which the backend checks with Surge's verify endpoint.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};

use crate::channels::token::{unix_now, TokenKey};
use crate::engine::log::random_u64;

/// (id, name) of the demo clinics.
pub const CLINICS: [(&str, &str); 3] = [
    ("riverside", "Riverside Clinic"),
    ("harbour", "Harbour Health Centre"),
    ("northpark", "North Park Pharmacy"),
];
const DATE: &str = "Saturday 28 November";
/// How often, on average, some slot changes on its own.
const TICK: Duration = Duration::from_millis(900);
/// The waiting room of `--demo-sale-in`.
pub const SALE_ROOM: &str = "demo-sale";
/// One admission every two seconds: a line a visitor can watch move.
const SALE_ADMIT_PER_MINUTE: u32 = 30;

/// A booking request from the page.
pub struct Booking {
    clinic: String,
    slot: String,
    user: String,
    /// The waiting room's admission token, in sale mode.
    admission: String,
}

/// What the public port needs from the demo.
pub struct DemoFront {
    tx: Sender<Booking>,
    tokens: TokenKey,
    /// Sale mode: the page waits in [`SALE_ROOM`] before the board.
    sale: bool,
}

/// The demo's thread, for shutdown.
pub struct DemoBackend {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl DemoBackend {
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

impl DemoFront {
    /// `{"user":..,"token":..,"clinics":[{"id":..,"name":..}]}` for a new visitor.
    pub fn session_json(&self) -> String {
        let user = format!("demo-{:06}", random_u64() % 1_000_000);
        let token = self
            .tokens
            .mint(&format!("user/{user}"), unix_now() + 86_400);
        let clinics: Vec<_> = CLINICS
            .iter()
            .map(|(id, name)| serde_json::json!({"id": id, "name": name}))
            .collect();
        let room = self.sale.then_some(SALE_ROOM);
        serde_json::json!({"user": user, "token": token, "clinics": clinics, "room": room})
            .to_string()
    }

    /// Queues a booking from `?clinic=..&slot=..&user=..`.
    pub fn book(&self, query: &str) -> Result<(), (u16, &'static str)> {
        let mut booking = Booking {
            clinic: String::new(),
            slot: String::new(),
            user: String::new(),
            admission: String::new(),
        };
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "clinic" => booking.clinic = v.into_owned(),
                "slot" => booking.slot = v.into_owned(),
                "user" => booking.user = v.into_owned(),
                "admission" => booking.admission = v.into_owned(),
                _ => {}
            }
        }
        let user_ok = booking
            .user
            .strip_prefix("demo-")
            .is_some_and(|n| n.len() == 6 && n.bytes().all(|b| b.is_ascii_digit()));
        if !user_ok
            || !CLINICS.iter().any(|(id, _)| *id == booking.clinic)
            || booking.slot.len() != 5
        {
            return Err((400, "need clinic, slot and user from /demo/session"));
        }
        match self.tx.try_send(booking) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err((503, "too many bookings at once; try again")),
            Err(TrySendError::Disconnected(_)) => Err((503, "the demo backend has stopped")),
        }
    }
}

struct Clinic {
    id: &'static str,
    name: &'static str,
    slots: Vec<(String, u32)>,
}

impl Clinic {
    fn state(&self) -> String {
        let slots: Vec<_> = self
            .slots
            .iter()
            .map(|(t, free)| serde_json::json!({"t": t, "free": free}))
            .collect();
        serde_json::json!({"clinic": self.id, "name": self.name, "date": DATE, "slots": slots})
            .to_string()
    }
}

struct Backend {
    clinics: Vec<Clinic>,
    publish_url: String,
    api_key: Option<String>,
    agent: ureq::Agent,
    rng: u64,
    bookings: u64,
    /// Sale mode: seconds from start to the room's opening.
    sale_in: Option<u64>,
    rooms_url: String,
}

impl Backend {
    fn next(&mut self) -> u64 {
        // xorshift64: plenty for a demo's "someone else booked a slot".
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn request(&self, method: &str, url: &str) -> ureq::Request {
        let req = self.agent.request(method, url);
        match &self.api_key {
            Some(key) => req.set("Authorization", &format!("Bearer {key}")),
            None => req,
        }
    }

    /// Sale mode: the room, as a booking backend would make it.
    fn open_sale(&self) {
        let Some(sale_in) = self.sale_in else {
            return;
        };
        let body = serde_json::json!({
            "admit_per_minute": SALE_ADMIT_PER_MINUTE,
            "opens_at": unix_now() + sale_in,
        });
        let url = format!("{}/{SALE_ROOM}", self.rooms_url);
        if let Err(e) = self.request("PUT", &url).send_string(&body.to_string()) {
            tracing::warn!(error = %e, "demo: creating the waiting room failed");
        }
    }

    /// Sale mode: whether `admission` lets its holder book, asked of
    /// Surge's verify endpoint as a booking backend would.
    fn admitted(&self, admission: &str) -> bool {
        if self.sale_in.is_none() {
            return true;
        }
        let url = format!("{}/{SALE_ROOM}/verify", self.rooms_url);
        let body = serde_json::json!({ "token": admission }).to_string();
        let answer = self
            .request("POST", &url)
            .send_string(&body)
            .ok()
            .and_then(|r| r.into_string().ok())
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
        answer.is_some_and(|v| v["valid"] == true)
    }

    fn publish(&self, channel: &str, data: &str) {
        let body = format!(r#"{{"ch":"{channel}","data":{data}}}"#);
        let req = self.request("POST", &self.publish_url);
        if let Err(e) = req.send_string(&body) {
            tracing::debug!(error = %e, channel, "demo publish failed");
        }
    }

    fn publish_clinic(&self, index: usize) {
        if let Some(c) = self.clinics.get(index) {
            self.publish(&format!("clinic:{}", c.id), &c.state());
        }
    }

    fn someone_else_books_or_cancels(&mut self) {
        let c = (self.next() % self.clinics.len() as u64) as usize;
        let s = (self.next() % self.clinics[c].slots.len() as u64) as usize;
        let up = self.next().is_multiple_of(3);
        let free = &mut self.clinics[c].slots[s].1;
        *free = if up {
            (*free + 1).min(6)
        } else {
            free.saturating_sub(1)
        };
        self.publish_clinic(c);
    }

    fn book(&mut self, b: Booking) {
        let Some(c) = self.clinics.iter().position(|c| c.id == b.clinic) else {
            return;
        };
        let clinic_name = self.clinics[c].name;
        if !self.admitted(&b.admission) {
            let refusal = serde_json::json!({"status": "rejected", "reason": "not admitted", "clinic": clinic_name, "slot": b.slot});
            return self.publish(&format!("user/{}", b.user), &refusal.to_string());
        }
        let slot = self.clinics[c].slots.iter_mut().find(|(t, _)| *t == b.slot);
        let confirmation = match slot {
            Some((_, free)) if *free > 0 => {
                *free -= 1;
                self.bookings += 1;
                serde_json::json!({"status": "confirmed", "booking": format!("B-{}", 1000 + self.bookings), "clinic": clinic_name, "slot": b.slot})
            }
            _ => serde_json::json!({"status": "rejected", "clinic": clinic_name, "slot": b.slot}),
        };
        self.publish_clinic(c);
        self.publish(&format!("user/{}", b.user), &confirmation.to_string());
    }
}

/// The page-facing half, made before the workers start (they answer
/// `/demo/*`); its bookings queue until [`start_backend`] runs.
pub fn front(tokens: TokenKey, sale: bool) -> (Arc<DemoFront>, Receiver<Booking>) {
    let (tx, rx) = crossbeam_channel::bounded(1024);
    (Arc::new(DemoFront { tx, tokens, sale }), rx)
}

/// Starts the backend thread, publishing to `publish_addr`; with
/// `sale_in`, it first makes the waiting room that opens that many seconds
/// later.
pub fn start_backend(
    rx: Receiver<Booking>,
    publish_addr: std::net::SocketAddr,
    api_key: Option<String>,
    sale_in: Option<u64>,
) -> std::io::Result<DemoBackend> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut backend = Backend {
        clinics: Vec::new(),
        publish_url: format!("http://{publish_addr}/api/publish"),
        api_key,
        agent: ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(5))
            .build(),
        rng: random_u64() | 1,
        bookings: 0,
        sale_in,
        rooms_url: format!("http://{publish_addr}/api/rooms"),
    };
    for (id, name) in CLINICS {
        let slots = (0..16)
            .map(|i| {
                (
                    format!("{:02}:{:02}", 9 + i / 4, (i % 4) * 15),
                    (backend.next() % 5) as u32,
                )
            })
            .collect();
        backend.clinics.push(Clinic { id, name, slots });
    }
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("surge-demo".into())
        .spawn(move || run(backend, rx, flag))?;
    Ok(DemoBackend { stop, thread })
}

fn run(mut backend: Backend, rx: Receiver<Booking>, stop: Arc<AtomicBool>) {
    backend.open_sale();
    for c in 0..backend.clinics.len() {
        backend.publish_clinic(c);
    }
    while !stop.load(Ordering::Relaxed) {
        let wait = TICK.mul_f64(0.5 + (backend.next() % 100) as f64 / 100.0);
        match rx.recv_timeout(wait) {
            Ok(booking) => backend.book(booking),
            Err(RecvTimeoutError::Timeout) => backend.someone_else_books_or_cancels(),
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
}
