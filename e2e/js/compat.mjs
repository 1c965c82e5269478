// compat.mjs checks that a running chatd works with the OFFICIAL `phoenix`
// npm client, unchanged: connect with a token, join a room, push new_msg and
// get the reply, receive the broadcast on two sockets, get a stable error
// reason, leave (ok reply, phx_close, onClose) and keep heartbeats going.
//
// Usage:
//
//	node compat.mjs --url http://127.0.0.1:4000 --token-a JWT --token-b JWT [--room lobby] [--timeout-ms 15000]
//
// Every option has an environment twin: CHATD_URL, CHATD_TOKEN_A,
// CHATD_TOKEN_B, CHATD_ROOM, CHATD_TIMEOUT_MS. The two tokens must belong to
// two different users.
//
// On success it prints a JSON summary on stdout and exits 0. On any failure,
// or when the whole run takes longer than the timeout, it prints what went
// wrong on stderr, a JSON summary with "ok": false on stdout, and exits 1.
// It never hangs: the overall timeout always ends the process.

import { Socket } from "phoenix";
import WebSocket from "ws";

const HEARTBEAT_MS = 500; // low, so the heartbeat check below sees several
const HEARTBEAT_WATCH_MS = 1800;
const STEP_TIMEOUT_MS = 3000;
const LONG_BODY_CHARS = 5000; // over the default CHAT_MAX_BODY of 4000
const BODY = "hello from phoenix.js";

function parseArgs(argv) {
  const opts = {
    url: process.env.CHATD_URL || "",
    tokenA: process.env.CHATD_TOKEN_A || "",
    tokenB: process.env.CHATD_TOKEN_B || "",
    room: process.env.CHATD_ROOM || "lobby",
    timeoutMs: Number(process.env.CHATD_TIMEOUT_MS || 15000),
  };
  const names = { "--url": "url", "--token-a": "tokenA", "--token-b": "tokenB", "--room": "room", "--timeout-ms": "timeoutMs" };
  for (let i = 0; i < argv.length; i++) {
    let arg = argv[i];
    let value;
    const eq = arg.indexOf("=");
    if (eq > 0) {
      value = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    const key = names[arg];
    if (!key) usage(`unknown argument ${JSON.stringify(argv[i])}`);
    if (value === undefined) {
      if (i + 1 >= argv.length) usage(`${arg} needs a value`);
      value = argv[++i];
    }
    opts[key] = key === "timeoutMs" ? Number(value) : value;
  }
  if (!opts.url) usage("the chatd URL is required (--url or CHATD_URL)");
  if (!opts.tokenA || !opts.tokenB) usage("two tokens are required (--token-a/--token-b or CHATD_TOKEN_A/CHATD_TOKEN_B)");
  if (!Number.isFinite(opts.timeoutMs) || opts.timeoutMs <= 0) usage("--timeout-ms must be a positive number");
  return opts;
}

function usage(msg) {
  process.stderr.write(`compat: ${msg}\nusage: node compat.mjs --url http://HOST:PORT --token-a JWT --token-b JWT [--room NAME] [--timeout-ms MS]\n`);
  process.exit(2);
}

const opts = parseArgs(process.argv.slice(2));
const summary = { ok: false, url: opts.url, room: opts.room, steps: [] };
const sockets = [];

function step(name, detail) {
  summary.steps.push(detail === undefined ? name : `${name}: ${detail}`);
}

function finish(code, err) {
  if (err) {
    summary.ok = false;
    summary.error = err instanceof Error ? err.message : String(err);
    process.stderr.write(`compat: FAIL: ${summary.error}\n`);
  }
  process.stdout.write(JSON.stringify(summary, null, 2) + "\n");
  for (const s of sockets) {
    try {
      s.disconnect();
    } catch {
      // ending anyway
    }
  }
  process.exit(code);
}

const overall = setTimeout(() => {
  finish(1, new Error(`timed out after ${opts.timeoutMs} ms; last step done: ${summary.steps.at(-1) ?? "(none)"}`));
}, opts.timeoutMs);

process.on("unhandledRejection", (err) => finish(1, err));
process.on("uncaughtException", (err) => finish(1, err));

// withTimeout runs executor like a Promise's, failing after ms with what.
function withTimeout(what, executor, ms = STEP_TIMEOUT_MS) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
    executor(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (e) => {
        clearTimeout(timer);
        reject(e instanceof Error ? e : new Error(`${what}: ${typeof e === "string" ? e : JSON.stringify(e)}`));
      },
    );
  });
}

function socketEndpoint(url) {
  // phoenix appends "/websocket" to the endpoint it is given.
  const u = new URL(url);
  if (u.protocol === "http:") u.protocol = "ws:";
  else if (u.protocol === "https:") u.protocol = "wss:";
  u.pathname = u.pathname.replace(/\/+$/, "") + "/socket";
  u.search = "";
  return u.toString();
}

// openSocket connects one phoenix Socket and records its events.
function openSocket(label, token) {
  const socket = new Socket(socketEndpoint(opts.url), {
    transport: WebSocket,
    params: { token },
    heartbeatIntervalMs: HEARTBEAT_MS,
    timeout: STEP_TIMEOUT_MS,
    // A broken server must show as a failure, not as a quiet reconnect.
    reconnectAfterMs: () => 60000,
    rejoinAfterMs: () => 60000,
  });
  sockets.push(socket);
  const rec = { label, socket, opens: 0, closes: [], errors: 0, messages: [] };
  socket.onOpen(() => rec.opens++);
  socket.onClose((ev) => rec.closes.push({ code: ev && ev.code, reason: ev && ev.reason }));
  socket.onError(() => rec.errors++);
  socket.onMessage((msg) => rec.messages.push(msg));
  const opened = withTimeout(`${label}: connect`, (resolve, reject) => {
    socket.onOpen(() => resolve());
    socket.onError((err) => {
      const msg = err && err.message ? err.message : "transport error";
      reject(new Error(`${label}: connect failed: ${msg} (endpoint ${socket.endPointURL().replace(/token=[^&]*/, "token=...")})`));
    });
  });
  socket.connect();
  return { rec, opened };
}

function join(label, channel) {
  return withTimeout(`${label}: join ${channel.topic}`, (resolve, reject) => {
    channel
      .join()
      .receive("ok", (resp) => resolve(resp))
      .receive("error", (resp) => reject(new Error(`${label}: join ${channel.topic} refused: ${JSON.stringify(resp)}`)))
      .receive("timeout", () => reject(new Error(`${label}: join ${channel.topic} timed out`)));
  });
}

function push(label, channel, event, payload) {
  return withTimeout(`${label}: push ${event}`, (resolve) => {
    channel
      .push(event, payload)
      .receive("ok", (resp) => resolve({ status: "ok", response: resp }))
      .receive("error", (resp) => resolve({ status: "error", response: resp }))
      .receive("timeout", () => resolve({ status: "timeout" }));
  });
}

function waitFor(what, cond, ms = STEP_TIMEOUT_MS) {
  return withTimeout(what, (resolve) => {
    const tick = () => {
      const v = cond();
      if (v) resolve(v);
      else setTimeout(tick, 10);
    };
    tick();
  }, ms);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

const RFC3339 = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/;

function checkBroadcast(label, msg, id, user) {
  assert(msg && typeof msg === "object", `${label}: new_msg payload is not an object: ${JSON.stringify(msg)}`);
  for (const f of ["id", "room", "user_id", "body", "inserted_at"]) {
    assert(typeof msg[f] === "string" && msg[f] !== "", `${label}: new_msg field ${f} missing or not a non-empty string: ${JSON.stringify(msg)}`);
  }
  assert(msg.id === id, `${label}: broadcast id ${msg.id} differs from the push reply's id ${id}`);
  assert(msg.room === opts.room, `${label}: broadcast room ${JSON.stringify(msg.room)}, want ${JSON.stringify(opts.room)}`);
  assert(msg.body === BODY, `${label}: broadcast body ${JSON.stringify(msg.body)}, want ${JSON.stringify(BODY)}`);
  assert(msg.user_id === user, `${label}: broadcast user_id ${JSON.stringify(msg.user_id)}, want the sender ${JSON.stringify(user)}`);
  assert(RFC3339.test(msg.inserted_at), `${label}: inserted_at ${JSON.stringify(msg.inserted_at)} is not an RFC 3339 timestamp`);
}

async function main() {
  const topic = `room:${opts.room}`;

  // 1. Two users connect and join.
  const a = openSocket("A", opts.tokenA);
  await a.opened;
  step("A connected");
  const chA = a.rec.socket.channel(topic, {});
  const receivedA = [];
  chA.on("new_msg", (m) => receivedA.push(m));
  let closedA = null;
  chA.onClose((reason) => {
    closedA = { reason: reason === undefined ? null : reason };
  });
  summary.join_a = await join("A", chA);
  assert(chA.state === "joined", `A: channel state ${chA.state} after an ok join`);
  step("A joined", topic);

  const b = openSocket("B", opts.tokenB);
  await b.opened;
  step("B connected");
  const chB = b.rec.socket.channel(topic, {});
  const receivedB = [];
  chB.on("new_msg", (m) => receivedB.push(m));
  summary.join_b = await join("B", chB);
  step("B joined", topic);

  // 2. A sends; the reply carries the id; both receive the broadcast.
  const sent = await push("A", chA, "new_msg", { body: BODY });
  assert(sent.status === "ok", `A: new_msg reply ${JSON.stringify(sent)}, want status ok`);
  const id = sent.response && sent.response.id;
  assert(typeof id === "string" && id !== "", `A: new_msg ok reply has no id: ${JSON.stringify(sent.response)}`);
  summary.push_reply = sent;
  step("A new_msg acknowledged", id);

  const gotA = await waitFor("A: broadcast of its own message", () => receivedA.find((m) => m.id === id));
  const gotB = await waitFor("B: broadcast of A's message", () => receivedB.find((m) => m.id === id));
  // The sender is A: learn its user id from the broadcast, and check B's copy
  // names the same user.
  const userA = gotA.user_id;
  checkBroadcast("A", gotA, id, userA);
  checkBroadcast("B", gotB, id, userA);
  summary.received = { a: gotA, b: gotB };
  step("both received new_msg", id);

  // 3. A stable error reason on the push's own ref; the channel survives it.
  const long = await push("A", chA, "new_msg", { body: "x".repeat(LONG_BODY_CHARS) });
  assert(long.status === "error", `A: ${LONG_BODY_CHARS}-char body got ${JSON.stringify(long)}, want an error reply`);
  assert(long.response && long.response.reason === "body too long",
    `A: ${LONG_BODY_CHARS}-char body error reason ${JSON.stringify(long.response)}, want "body too long"`);
  summary.body_too_long = long;
  step("long body refused", long.response.reason);
  assert(a.rec.socket.isConnected() && chA.state === "joined", "A: socket or channel lost after an error reply");

  // 4. Leave: ok reply, then phx_close from the server, and onClose fires.
  const leave = await withTimeout("A: leave", (resolve) => {
    chA
      .leave()
      .receive("ok", (resp) => resolve({ status: "ok", response: resp }))
      .receive("error", (resp) => resolve({ status: "error", response: resp }))
      .receive("timeout", () => resolve({ status: "timeout" }));
  });
  assert(leave.status === "ok", `A: leave reply ${JSON.stringify(leave)}, want status ok`);
  await waitFor("A: channel onClose after leave", () => closedA);
  const phxClose = await waitFor("A: phx_close frame from the server after phx_leave",
    () => a.rec.messages.find((m) => m.topic === topic && m.event === "phx_close"));
  assert(chA.state === "closed", `A: channel state ${chA.state} after leave, want closed`);
  summary.leave = { reply: leave, phx_close: { join_ref: phxClose.join_ref, ref: phxClose.ref }, on_close: closedA, state: chA.state };
  step("A left", "ok reply, phx_close, onClose");

  // 5. Heartbeats: every 500 ms, each answered on topic phoenix in time
  // (phoenix's client drops the connection when a reply is late).
  const hbBefore = a.rec.messages.filter((m) => m.topic === "phoenix" && m.event === "phx_reply").length;
  const closesBefore = a.rec.closes.length + b.rec.closes.length;
  const opensBefore = a.rec.opens + b.rec.opens;
  await sleep(HEARTBEAT_WATCH_MS);
  const hbReplies = a.rec.messages.filter((m) => m.topic === "phoenix" && m.event === "phx_reply");
  const newReplies = hbReplies.slice(hbBefore);
  assert(a.rec.socket.isConnected() && b.rec.socket.isConnected(),
    `a socket disconnected during the heartbeat watch (A closes ${JSON.stringify(a.rec.closes)}, B closes ${JSON.stringify(b.rec.closes)})`);
  assert(a.rec.closes.length + b.rec.closes.length === closesBefore && a.rec.opens + b.rec.opens === opensBefore,
    `a socket closed or reconnected during the heartbeat watch (A closes ${JSON.stringify(a.rec.closes)}, B closes ${JSON.stringify(b.rec.closes)})`);
  assert(newReplies.length >= 3, `A: ${newReplies.length} heartbeat replies in ${HEARTBEAT_WATCH_MS} ms at a ${HEARTBEAT_MS} ms interval, want at least 3`);
  for (const r of newReplies) {
    assert(r.payload && r.payload.status === "ok", `A: heartbeat reply ${JSON.stringify(r)}, want status ok`);
  }
  const rtt = await withTimeout("A: socket.ping", (resolve) => {
    if (typeof a.rec.socket.ping !== "function") resolve(null);
    else if (!a.rec.socket.ping((ms) => resolve(ms))) resolve(null);
  });
  assert(chB.state === "joined", `B: channel state ${chB.state} after the heartbeat watch, want joined`);
  summary.heartbeat = { interval_ms: HEARTBEAT_MS, watched_ms: HEARTBEAT_WATCH_MS, replies: newReplies.length, ping_rtt_ms: rtt };
  step("heartbeats answered", `${newReplies.length} replies`);

  // Informational: what else the server pushed after the join (presence).
  summary.server_pushes_seen = [...new Set([...a.rec.messages, ...b.rec.messages]
    .filter((m) => m.topic !== "phoenix" && m.ref == null)
    .map((m) => m.event))].sort();

  // 6. Disconnect both, cleanly.
  for (const [label, s] of [["A", a.rec.socket], ["B", b.rec.socket]]) {
    await withTimeout(`${label}: disconnect`, (resolve) => s.disconnect(() => resolve()));
    assert(!s.isConnected(), `${label}: still connected after disconnect`);
  }
  summary.disconnected = true;
  summary.sockets = {
    a: { opens: a.rec.opens, errors: a.rec.errors, closes: a.rec.closes },
    b: { opens: b.rec.opens, errors: b.rec.errors, closes: b.rec.closes },
  };
  step("disconnected");
  assert(a.rec.opens === 1 && b.rec.opens === 1, `a socket reconnected: A opened ${a.rec.opens} times, B ${b.rec.opens}`);
  assert(a.rec.errors === 0 && b.rec.errors === 0, `transport errors: A ${a.rec.errors}, B ${b.rec.errors}`);
}

main().then(
  () => {
    clearTimeout(overall);
    summary.ok = true;
    finish(0);
  },
  (err) => finish(1, err),
);
