// chatd web chat: a small client on the official phoenix JS client
// (vendor/phoenix, served by the binary). No framework, no build step.
//
// Every message body and user name is put into the page with textContent,
// never as HTML, and the page's CSP forbids inline script and requires
// Trusted Types, so nothing a user sends can run as code.

import { Socket, Presence } from "./vendor/phoenix/phoenix.mjs";

const ROOM_RE = /^[A-Za-z0-9_.-]{1,64}$/;
const HISTORY = 50;
const ERROR_MS = 6000;

const $ = (sel) => document.querySelector(sel);
const el = {
  status: $("[data-role=status]"),
  me: $(".me"),
  meName: $("[data-role=me]"),
  signoutBtn: $("[data-action=signout]"),
  signinView: $("[data-view=signin]"),
  chatView: $("[data-view=chat]"),
  modeHint: $("[data-role=mode-hint]"),
  signinForm: $("[data-role=signin-form]"),
  nameField: $("[data-field=name]"),
  tokenField: $("[data-field=token]"),
  signinError: $("[data-role=signin-error]"),
  rooms: $("[data-role=rooms]"),
  joinForm: $("[data-role=join-form]"),
  presence: $("[data-role=presence]"),
  presenceCount: $("[data-role=presence-count]"),
  roomTitle: $("[data-role=room-title]"),
  roomState: $("[data-role=room-state]"),
  leaveBtn: $("[data-action=leave]"),
  banner: $("[data-role=banner]"),
  messages: $("[data-role=messages]"),
  composer: $("[data-role=composer]"),
  error: $("[data-role=error]"),
};

const state = {
  devMode: null,   // true: POST /api/dev/token mints tokens
  token: null,
  user: null,
  socket: null,
  conn: "offline", // offline | connecting | connected | disconnected
  everOpen: false,
  failures: 0,
  rooms: new Map(), // name -> Room
  current: null,    // Room shown
};

// Server error reasons (README, Protocol) in words for people.
function reasonText(reason) {
  switch (reason) {
    case "rate_limited": return "Slow down: you are sending messages too fast. Not sent.";
    case "body too long": return "Message too long: not sent. Shorten it and try again.";
    case "overloaded": return "The server is overloaded: your message was not sent. Try again in a moment.";
    case "unavailable": return "Chat is temporarily unavailable: not sent. Try again shortly.";
    case "outcome unknown": return "The server did not answer in time: the message may still appear. Check before sending it again.";
    case "too many channels joined": return "You have joined too many rooms: leave one first.";
    case "unmatched topic": return "That room name is not valid.";
    case "invalid payload": return "The server rejected the message as invalid.";
    case "unauthorized": return "Your token does not allow this in that room.";
    default: return "Server error: " + (reason || "unknown");
  }
}

// ---------- room state ----------

class Room {
  constructor(name) {
    this.name = name;
    this.msgs = new Map(); // id -> message
    this.ids = [];         // sorted ascending (UUIDv7: time order)
    this.lastId = null;    // greatest id seen: the since of a rejoin
    this.sinceSent = null; // the since of the join in flight
    this.unread = 0;
    this.status = "joining"; // joining | joined | errored
    this.notice = null;
    this.channel = null;
    this.presence = null;
  }
}

// addMessages stores messages not seen yet (deduped by id) in id order and
// shows them if the room is on screen.
function addMessages(room, list) {
  let added = 0;
  for (const m of list || []) {
    if (!m || typeof m.id !== "string" || room.msgs.has(m.id)) continue;
    room.msgs.set(m.id, m);
    const i = insertIndex(room.ids, m.id);
    room.ids.splice(i, 0, m.id);
    if (room.lastId === null || m.id > room.lastId) room.lastId = m.id;
    added++;
    if (room === state.current) renderMessage(room, m, i);
  }
  if (added && room !== state.current) {
    room.unread += added;
    renderRooms();
  }
  if (room === state.current) renderEmpty(room);
}

function insertIndex(ids, id) {
  let lo = 0, hi = ids.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (ids[mid] < id) lo = mid + 1; else hi = mid;
  }
  return lo;
}

// ---------- rendering ----------

function node(tag, cls, text) {
  const n = document.createElement(tag);
  if (cls) n.className = cls;
  if (text !== undefined) n.textContent = text;
  return n;
}

function fmtTime(s) {
  const d = new Date(s);
  if (isNaN(d)) return "";
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function renderMessage(room, m, index) {
  const list = el.messages;
  const nearBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  const li = node("li");
  li.dataset.id = m.id;
  li.dataset.user = String(m.user_id ?? "");
  if (m.user_id === state.user) li.classList.add("mine");
  const meta = node("div", "meta");
  meta.append(node("span", "author", String(m.user_id ?? "?")));
  const t = node("time", "time", fmtTime(m.inserted_at));
  if (m.inserted_at) t.dateTime = String(m.inserted_at);
  meta.append(t);
  li.append(meta, node("div", "body", String(m.body ?? "")));
  const nextId = room.ids[index + 1];
  const next = nextId ? list.querySelector(`li[data-id="${CSS.escape(nextId)}"]`) : null;
  list.insertBefore(li, next);
  if (nearBottom || m.user_id === state.user) list.scrollTop = list.scrollHeight;
}

function renderEmpty(room) {
  const empty = el.messages.querySelector("li.empty");
  if (room.ids.length === 0 && room.status === "joined" && !empty) {
    el.messages.append(node("li", "empty", "No messages yet. Say hi!"));
  } else if (room.ids.length > 0 && empty) {
    empty.remove();
  }
}

function renderAllMessages() {
  el.messages.replaceChildren();
  const room = state.current;
  if (!room) return;
  el.messages.dataset.room = room.name;
  room.ids.forEach((id, i) => renderMessage(room, room.msgs.get(id), i));
  renderEmpty(room);
  el.messages.scrollTop = el.messages.scrollHeight;
}

function renderRooms() {
  el.rooms.replaceChildren();
  for (const room of state.rooms.values()) {
    const b = node("button");
    b.type = "button";
    b.dataset.room = room.name;
    b.append(node("span", "", "#" + room.name));
    if (room.unread > 0) b.append(node("span", "unread", String(room.unread)));
    b.setAttribute("aria-current", room === state.current ? "true" : "false");
    b.addEventListener("click", () => selectRoom(room.name));
    const li = node("li");
    li.append(b);
    el.rooms.append(li);
  }
}

function renderPresence() {
  el.presence.replaceChildren();
  const room = state.current;
  if (!room || !room.presence) { el.presenceCount.textContent = ""; return; }
  const users = room.presence.list((id, { metas }) => ({ id, n: metas.length }));
  users.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  for (const u of users) {
    const li = node("li");
    li.dataset.user = u.id;
    li.append(node("span", "name", u.id));
    if (u.id === state.user) li.append(node("span", "you", "(you)"));
    if (u.n > 1) li.append(node("span", "tabs", `×${u.n}`));
    el.presence.append(li);
  }
  el.presenceCount.textContent = `(${users.length})`;
}

function renderRoomState() {
  const room = state.current;
  el.roomTitle.textContent = room ? "#" + room.name : "No room";
  el.leaveBtn.hidden = !room;
  el.roomState.textContent = !room ? "" :
    room.status === "joined" ? "" :
    room.status === "joining" ? "joining…" : "reconnecting…";
  renderBanner();
  const canSend = !!room && room.status === "joined" && state.conn === "connected";
  el.composer.querySelector("button").disabled = !canSend;
  el.composer.dataset.ready = canSend ? "true" : "false";
}

function renderBanner() {
  let text = null, kind = "error";
  if (state.conn === "disconnected") {
    text = state.everOpen
      ? "Disconnected from the server. Reconnecting… Messages sent meanwhile will appear when the connection is back."
      : (state.failures >= 3
        ? "Cannot connect: the server may be down, or the token is invalid or expired."
        : "Cannot reach the server. Retrying…");
  } else if (state.current && state.current.notice) {
    text = state.current.notice;
    kind = "info";
  }
  el.banner.hidden = !text;
  el.banner.textContent = text || "";
  el.banner.dataset.kind = kind;
}

function setConn(s) {
  state.conn = s;
  el.status.dataset.state = s;
  el.status.textContent = {
    offline: "not connected",
    connecting: "connecting…",
    connected: "connected",
    disconnected: "disconnected",
  }[s];
  renderRoomState();
}

let errorTimer = null;
function showError(text) {
  el.error.textContent = text;
  el.error.hidden = false;
  clearTimeout(errorTimer);
  errorTimer = setTimeout(() => { el.error.hidden = true; }, ERROR_MS);
}

// ---------- socket and channels ----------

function connect() {
  // authToken (phoenix 1.8) sends the token as a WebSocket subprotocol,
  // not in the URL, which proxies and servers may log.
  const token = state.token;
  const socket = new Socket("/socket", { authToken: () => token });
  state.socket = socket;
  setConn("connecting");
  socket.onOpen(() => { state.everOpen = true; state.failures = 0; setConn("connected"); });
  socket.onError(() => { state.failures++; setConn("disconnected"); });
  socket.onClose(() => { if (state.socket === socket) setConn("disconnected"); });
  socket.connect();
}

function joinRoom(name) {
  if (!ROOM_RE.test(name)) { showError("Room names are 1-64 letters, digits, _ . or -"); return; }
  if (state.rooms.has(name)) { selectRoom(name); return; }
  const room = new Room(name);
  state.rooms.set(name, room);
  // A function: evaluated at every (re)join, so a rejoin after a lost
  // connection asks for exactly what was missed.
  const ch = state.socket.channel("room:" + name, () => {
    room.sinceSent = room.lastId;
    return room.lastId ? { since: room.lastId } : { history: HISTORY };
  });
  room.channel = ch;
  room.presence = new Presence(ch);
  room.presence.onSync(() => { if (room === state.current) renderPresence(); });
  ch.on("new_msg", (m) => addMessages(room, [m]));
  ch.onError(() => { room.status = "errored"; if (room === state.current) renderRoomState(); });
  ch.join()
    .receive("ok", (resp) => {
      room.status = "joined";
      room.notice = room.sinceSent && resp && resp.recovered === false
        ? "Some messages sent while you were away could not be recovered."
        : null;
      addMessages(room, resp && resp.messages);
      if (room === state.current) renderRoomState();
    })
    .receive("error", (resp) => {
      const reason = resp && resp.reason;
      showError(`Could not join #${name}: ${reasonText(reason)}`);
      if (reason === "unauthorized") {
        // The token decides, and a rejoin would be refused the same way:
        // stop the client's rejoin timer and drop the room.
        ch.leave();
        dropRoom(room);
        return;
      }
      room.status = "errored";
      if (room === state.current) renderRoomState();
    })
    .receive("timeout", () => {
      room.status = "errored";
      if (room === state.current) renderRoomState();
    });
  selectRoom(name);
}

function selectRoom(name) {
  const room = state.rooms.get(name) || null;
  state.current = room;
  if (room) room.unread = 0;
  renderRooms();
  renderAllMessages();
  renderPresence();
  renderRoomState();
  updateURL();
}

function leaveRoom() {
  const room = state.current;
  if (!room) return;
  room.channel.leave();
  dropRoom(room);
}

// dropRoom forgets a room that was left, showing another one if it was on
// screen.
function dropRoom(room) {
  if (state.rooms.get(room.name) !== room) return;
  state.rooms.delete(room.name);
  if (state.current !== room) { renderRooms(); return; }
  const next = state.rooms.keys().next();
  selectRoom(next.done ? null : next.value);
}

function sendMessage(input) {
  const room = state.current;
  const body = input.value;
  if (!room || body.trim() === "") return;
  if (room.status !== "joined" || state.conn !== "connected") {
    showError("Not connected: message not sent. Reconnecting…");
    return;
  }
  input.value = "";
  const restore = () => { if (input.value === "") input.value = body; };
  room.channel.push("new_msg", { body })
    .receive("error", (resp) => {
      const reason = resp && resp.reason;
      showError(reasonText(reason));
      // An unknown outcome may still be delivered: the text is not given
      // back, so that it is not sent twice.
      if (reason !== "outcome unknown") restore();
    })
    .receive("timeout", () => { showError("No answer from the server: the message may not have been sent."); restore(); });
}

// ---------- sign in ----------

function tokenSubject(token) {
  try {
    const p = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bin = atob(p.padEnd(Math.ceil(p.length / 4) * 4, "="));
    const claims = JSON.parse(new TextDecoder().decode(Uint8Array.from(bin, (c) => c.charCodeAt(0))));
    return typeof claims.sub === "string" && claims.sub !== "" ? claims.sub : null;
  } catch {
    return null;
  }
}

// probeDevMode asks the dev token endpoint with an empty name: 400 in dev
// mode, 404 when the server has a secret.
async function probeDevMode() {
  try {
    const r = await fetch("/api/dev/token", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: "{}",
    });
    return r.status !== 404;
  } catch {
    return true;
  }
}

async function devToken(name) {
  const r = await fetch("/api/dev/token", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ name }),
  });
  let data = {};
  try { data = await r.json(); } catch { /* not JSON */ }
  if (r.status === 404) {
    state.devMode = false;
    showMode();
    throw new Error("This server needs a token (see below).");
  }
  if (!r.ok || !data.token) throw new Error(data.reason || `the server answered ${r.status}`);
  return data;
}

function showMode() {
  el.nameField.hidden = !state.devMode;
  el.tokenField.hidden = !!state.devMode;
  el.modeHint.textContent = state.devMode
    ? "Pick a name and a room. (Dev mode: no password needed.)"
    : "Paste your token and pick a room.";
}

async function signIn({ name, token, room }) {
  el.signinError.hidden = true;
  try {
    room = (room || "lobby").trim();
    if (!ROOM_RE.test(room)) throw new Error("Room names are 1-64 letters, digits, _ . or -");
    if (token) {
      token = token.trim();
      const sub = tokenSubject(token);
      if (!sub) throw new Error("That does not look like a chatd token.");
      state.token = token;
      state.user = sub;
    } else {
      name = (name || "").trim();
      if (!name) throw new Error("Enter a name.");
      const data = await devToken(name);
      state.token = data.token;
      state.user = data.user_id || name;
    }
  } catch (e) {
    el.signinError.textContent = "Could not sign in: " + e.message;
    el.signinError.hidden = false;
    return;
  }
  el.meName.textContent = state.user;
  document.body.dataset.user = state.user;
  el.me.hidden = false;
  el.signinView.hidden = true;
  el.chatView.hidden = false;
  connect();
  joinRoom(room);
  el.composer.elements.body.focus();
}

function signOut() {
  if (state.socket) {
    const s = state.socket;
    state.socket = null;
    s.disconnect();
  }
  state.rooms.clear();
  state.current = null;
  state.token = null;
  state.user = null;
  state.everOpen = false;
  delete document.body.dataset.user;
  el.me.hidden = true;
  el.chatView.hidden = true;
  el.signinView.hidden = false;
  setConn("offline");
  history.replaceState(null, "", location.pathname);
}

// updateURL keeps ?name=&room= shareable (never the token).
function updateURL() {
  if (!state.user) return;
  const q = new URLSearchParams();
  if (state.devMode) q.set("name", state.user);
  if (state.current) q.set("room", state.current.name);
  history.replaceState(null, "", location.pathname + "?" + q.toString());
}

// ---------- wiring ----------

el.signinForm.addEventListener("submit", (e) => {
  e.preventDefault();
  const f = el.signinForm.elements;
  signIn(state.devMode
    ? { name: f.name.value, room: f.room.value }
    : { token: f.token.value, room: f.room.value });
});
el.composer.addEventListener("submit", (e) => {
  e.preventDefault();
  sendMessage(el.composer.elements.body);
});
el.joinForm.addEventListener("submit", (e) => {
  e.preventDefault();
  const input = el.joinForm.elements.room;
  const name = input.value.trim();
  if (!name) return;
  input.value = "";
  joinRoom(name);
});
el.leaveBtn.addEventListener("click", leaveRoom);
el.signoutBtn.addEventListener("click", signOut);

async function main() {
  const q = new URLSearchParams(location.search);
  const frag = new URLSearchParams(location.hash.slice(1));
  const fragToken = frag.get("token");
  if (fragToken) {
    // Keep the token out of the address bar and the history.
    history.replaceState(null, "", location.pathname + location.search);
  }
  const room = q.get("room") || "lobby";
  el.signinForm.elements.room.value = room;
  if (q.get("name")) el.signinForm.elements.name.value = q.get("name");
  state.devMode = await probeDevMode();
  showMode();
  if (fragToken) {
    await signIn({ token: fragToken, room });
  } else if (q.get("name") && state.devMode) {
    await signIn({ name: q.get("name"), room });
  }
  document.body.dataset.ready = "true";
}

main();
