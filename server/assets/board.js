// The demo slot board: pick a clinic, watch its slots live, book one and get
// the confirmation pushed to your private channel. Uses only surge.js.
import { Surge } from "/surge.js";

const $ = (id) => document.getElementById(id);
const answer = await fetch("/demo/session");
const session = answer.ok ? await answer.json() : null;

const surge = new Surge(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`, {
  onStatus(status, info = {}) {
    const badge = $("status");
    badge.dataset.status = status;
    clearInterval(badge.countdown);
    if (status === "live") badge.textContent = "Live";
    else if (status === "connecting") badge.textContent = "Connecting\u2026";
    else if (status === "failed") badge.textContent = "Disconnected";
    else if (status === "reconnecting") {
      let left = info.inSeconds;
      const show = () => (badge.textContent = left > 0 ? `Reconnecting in ${left} s` : "Reconnecting\u2026");
      show();
      badge.countdown = setInterval(() => { left -= 1; show(); }, 1000);
    }
  },
});

let current = null;
let unsubscribe = null;
let previous = new Map();

function renderClinics() {
  const nav = $("clinics");
  nav.replaceChildren(
    ...session.clinics.map((c) => {
      const b = document.createElement("button");
      b.textContent = c.name;
      b.dataset.clinic = c.id;
      b.setAttribute("aria-pressed", String(c.id === current));
      b.onclick = () => pick(c.id);
      return b;
    }),
  );
}

function renderSlots(data) {
  $("clinic-name").textContent = data.name;
  $("clinic-date").textContent = data.date;
  const grid = $("slots");
  grid.dataset.clinic = data.clinic;
  grid.replaceChildren(
    ...data.slots.map((s) => {
      const el = document.createElement("button");
      el.className = "slot";
      el.dataset.slot = s.t;
      el.dataset.free = String(s.free);
      el.innerHTML = `<span class="time">${s.t}</span><span class="free">${s.free > 0 ? `${s.free} free` : "full"}</span>`;
      if (previous.has(s.t) && previous.get(s.t) !== s.free) el.classList.add("changed");
      el.onclick = () => s.free > 0 && book(data, s.t);
      return el;
    }),
  );
  previous = new Map(data.slots.map((s) => [s.t, s.free]));
}

function pick(id) {
  if (unsubscribe) unsubscribe();
  current = id;
  previous = new Map();
  renderClinics();
  unsubscribe = surge.subscribe(`clinic:${id}`, (data) => {
    if (data && data.clinic === current) renderSlots(data);
  });
}

function banner(kind, text) {
  const el = $("banner");
  el.dataset.kind = kind;
  el.textContent = text;
  el.hidden = false;
  clearTimeout(el.hideTimer);
  if (kind !== "pending") el.hideTimer = setTimeout(() => (el.hidden = true), 8000);
}

// Sale mode: the admission the waiting room gave, shown to the backend with
// every booking.
let admission = "";

async function book(clinic, slot) {
  banner("pending", `Requesting ${slot} at ${clinic.name}\u2026`);
  const q = new URLSearchParams({ clinic: clinic.clinic, slot, user: session.user, admission });
  const r = await fetch(`/demo/book?${q}`, { method: "POST" });
  if (!r.ok) banner("rejected", "The booking service is busy; try again.");
}

// Confirmations come over the private channel, even if the page was
// offline when the booking backend published them.
if (session) surge.subscribe(`user/${session.user}`, (data, meta) => {
  if (!data) return;
  if (data.status === "confirmed") banner("confirmed", `Booked: ${data.slot} at ${data.clinic}. Reference ${data.booking}.`);
  else if (data.reason === "not admitted" && !meta.snapshot) banner("rejected", "You need to pass the waiting room first.");
  else if (data.status === "rejected" && !meta.snapshot) banner("rejected", `Sorry, ${data.slot} was just taken. Pick another slot.`);
}, { token: session.token });

function showBoard() {
  $("room").hidden = true;
  $("clinics").hidden = false;
  $("board").hidden = false;
  renderClinics();
  pick(session.clinics[0].id);
}

// Sale mode: wait in the room (the position pushed as it falls), then the board.
function waitInRoom(room) {
  $("room").hidden = false;
  $("clinics").hidden = true;
  $("board").hidden = true;
  surge.joinRoom(room, {
    onPosition({ position, etaSeconds, opensAt }) {
      $("room").dataset.position = position ?? "";
      $("room-position").textContent =
        position === null
          ? `The sale opens at ${new Date(opensAt * 1000).toLocaleTimeString()}`
          : `You are number ${position} in line`;
      $("room-eta").textContent = etaSeconds == null ? "" : `About ${Math.max(1, Math.round(etaSeconds / 60))} min to wait`;
    },
    onAdmitted({ token }) {
      admission = token;
      $("room").dataset.admitted = "true";
      showBoard();
    },
    onError({ message }) {
      $("room-position").textContent = message;
    },
  });
}

if (session) {
  $("user").textContent = `you are ${session.user}`;
  if (session.room) waitInRoom(session.room);
  else showBoard();
} else {
  // A Surge without --demo: nothing publishes slots here. Say so, and keep
  // the badge as proof that the WebSocket works.
  $("clinic-name").textContent = "No booking backend on this server";
  document.querySelector(".hint").hidden = true;
  $("clinic-date").textContent =
    "This Surge runs without --demo. Publish to a channel through the publish API and subscribe with surge.js; see docs/browser-client.md.";
}
