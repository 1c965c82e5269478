// presence.mjs checks that the OFFICIAL `phoenix` npm client's Presence
// works, unchanged, against chatd nodes of one cluster: user A on one node
// and user B on another join the same room; each side's Presence.list()
// shows both users (onSync). B leaves the channel: A's Presence calls
// onLeave for B and lists only A. B joins again on a new channel: A's
// Presence calls onJoin for B and both sides list both. B disconnects its
// socket: A's Presence calls onLeave again and lists only A.
//
// Usage:
//
//	node presence.mjs --url-a http://127.0.0.1:4001 --url-b http://127.0.0.1:4002 \
//	  --token-a JWT --token-b JWT --user-a alice --user-b bob [--room lobby] [--timeout-ms 30000]
//
// The two tokens must belong to the users --user-a and --user-b (their
// "sub"), two different users; the two URLs may name one node or two.
//
// On success it prints a JSON summary on stdout and exits 0. On any failure,
// or when the whole run takes longer than the timeout, it prints what went
// wrong on stderr, a JSON summary with "ok": false on stdout, and exits 1.
// It never hangs: the overall timeout always ends the process.

import { Socket, Presence } from "phoenix";
import WebSocket from "ws";

const STEP_TIMEOUT_MS = 8000; // presence crosses nodes, batched every 100 ms; race-enabled servers are slow

function parseArgs(argv) {
  const opts = { urlA: "", urlB: "", tokenA: "", tokenB: "", userA: "", userB: "", room: "lobby", timeoutMs: 30000 };
  const names = {
    "--url-a": "urlA",
    "--url-b": "urlB",
    "--token-a": "tokenA",
    "--token-b": "tokenB",
    "--user-a": "userA",
    "--user-b": "userB",
    "--room": "room",
    "--timeout-ms": "timeoutMs",
  };
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
  for (const k of ["urlA", "urlB", "tokenA", "tokenB", "userA", "userB"]) {
    if (!opts[k]) usage(`--${k.replace(/[AB]$/, (c) => "-" + c.toLowerCase())} is required`);
  }
  if (opts.userA === opts.userB) usage("--user-a and --user-b must differ");
  if (!Number.isFinite(opts.timeoutMs) || opts.timeoutMs <= 0) usage("--timeout-ms must be a positive number");
  return opts;
}

function usage(msg) {
  process.stderr.write(
    `presence: ${msg}\nusage: node presence.mjs --url-a URL --url-b URL --token-a JWT --token-b JWT --user-a NAME --user-b NAME [--room NAME] [--timeout-ms MS]\n`,
  );
  process.exit(2);
}

const opts = parseArgs(process.argv.slice(2));
const summary = { ok: false, room: opts.room, steps: [] };
const sockets = [];

function step(name, detail) {
  summary.steps.push(detail === undefined ? name : `${name}: ${detail}`);
}

function finish(code, err) {
  if (err) {
    summary.ok = false;
    summary.error = err instanceof Error ? err.message : String(err);
    process.stderr.write(`presence: FAIL: ${summary.error}\n`);
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

function withTimeout(what, executor, ms = STEP_TIMEOUT_MS) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
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

// waitFor polls cond every 10 ms until it returns a truthy value; on
// timeout the error includes detail().
function waitFor(what, cond, detail = () => "") {
  return new Promise((resolve, reject) => {
    const start = Date.now();
    const tick = () => {
      let v;
      try {
        v = cond();
      } catch (e) {
        reject(e);
        return;
      }
      if (v) resolve(v);
      else if (Date.now() - start > STEP_TIMEOUT_MS) reject(new Error(`${what}: not within ${STEP_TIMEOUT_MS} ms; ${detail()}`));
      else setTimeout(tick, 10);
    };
    tick();
  });
}

function assert(cond, msg) {
  if (!cond) throw new Error(msg);
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

function openSocket(label, url, token) {
  const socket = new Socket(socketEndpoint(url), {
    transport: WebSocket,
    params: { token },
    timeout: STEP_TIMEOUT_MS,
    // A broken server must show as a failure, not as a quiet reconnect.
    reconnectAfterMs: () => 60000,
    rejoinAfterMs: () => 60000,
  });
  sockets.push(socket);
  const opened = withTimeout(`${label}: connect`, (resolve, reject) => {
    socket.onOpen(() => resolve());
    socket.onError((err) => reject(new Error(`${label}: connect to ${url} failed: ${err && err.message ? err.message : "transport error"}`)));
  });
  socket.connect();
  return { socket, opened };
}

// track puts a Presence on channel and records its callbacks.
function track(label, channel) {
  const presence = new Presence(channel);
  const rec = { label, presence, syncs: 0, joins: [], leaves: [] };
  presence.onSync(() => rec.syncs++);
  presence.onJoin((key, current, joined) => {
    rec.joins.push({ key, current: current ? current.metas.length : 0, metas: joined.metas });
  });
  presence.onLeave((key, current, left) => {
    rec.leaves.push({ key, current: current.metas.length, metas: left.metas });
  });
  return rec;
}

// list is Presence.list() as {user: {metas: [...]}}.
function list(rec) {
  const out = {};
  rec.presence.list((key, pres) => {
    out[key] = { metas: pres.metas.map((m) => ({ phx_ref: m.phx_ref, node: m.node, online_at: m.online_at })) };
  });
  return out;
}

function users(rec) {
  return Object.keys(list(rec)).sort();
}

function sameUsers(rec, want) {
  return JSON.stringify(users(rec)) === JSON.stringify([...want].sort());
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

async function main() {
  const topic = `room:${opts.room}`;
  const A = opts.userA;
  const B = opts.userB;

  // 1. A joins on its node, then B on its node; each Presence syncs to both.
  const a = openSocket("A", opts.urlA, opts.tokenA);
  await a.opened;
  const chA = a.socket.channel(topic, {});
  const pA = track("A", chA);
  await join("A", chA);
  step("A joined", `${topic} on ${opts.urlA}`);
  await waitFor("A: Presence lists A after its join", () => pA.syncs > 0 && sameUsers(pA, [A]), () => JSON.stringify(list(pA)));
  step("A synced alone", users(pA).join(","));

  const b = openSocket("B", opts.urlB, opts.tokenB);
  await b.opened;
  const chB = b.socket.channel(topic, {});
  const pB = track("B", chB);
  await join("B", chB);
  step("B joined", `${topic} on ${opts.urlB}`);

  await waitFor("A: Presence lists both users", () => sameUsers(pA, [A, B]), () => `A lists ${JSON.stringify(list(pA))}`);
  await waitFor("B: Presence lists both users", () => pB.syncs > 0 && sameUsers(pB, [A, B]), () => `B lists ${JSON.stringify(list(pB))}`);
  summary.synced = { a: list(pA), b: list(pB) };
  assert(pA.joins.some((j) => j.key === B), `A: no onJoin for ${B}: ${JSON.stringify(pA.joins)}`);
  step("both sides list both", `A: ${users(pA).join(",")}; B: ${users(pB).join(",")}`);

  // 2. B leaves the channel: A's Presence sees the leave.
  const leavesBefore = pA.leaves.length;
  await withTimeout("B: leave", (resolve, reject) => {
    chB
      .leave()
      .receive("ok", () => resolve())
      .receive("error", (resp) => reject(new Error(`B: leave refused: ${JSON.stringify(resp)}`)))
      .receive("timeout", () => reject(new Error("B: leave timed out")));
  });
  step("B left the channel");
  const leave = await waitFor(
    "A: onLeave for B after B's channel.leave()",
    () => pA.leaves.slice(leavesBefore).find((l) => l.key === B && l.current === 0),
    () => `A's leaves ${JSON.stringify(pA.leaves)}; A lists ${JSON.stringify(list(pA))}`,
  );
  await waitFor("A: Presence lists only A after B's leave", () => sameUsers(pA, [A]), () => JSON.stringify(list(pA)));
  summary.leave = { on_leave: leave, list_a: list(pA) };
  step("A saw B leave", `onLeave ${leave.key}; A lists ${users(pA).join(",")}`);

  // 3. B joins again on a new channel of the same socket.
  const joinsBefore = pA.joins.length;
  const chB2 = b.socket.channel(topic, {});
  const pB2 = track("B", chB2);
  await join("B (again)", chB2);
  const rejoin = await waitFor(
    "A: onJoin for B after B's rejoin",
    () => pA.joins.slice(joinsBefore).find((j) => j.key === B),
    () => `A's joins ${JSON.stringify(pA.joins)}`,
  );
  await waitFor("A: Presence lists both users again", () => sameUsers(pA, [A, B]), () => JSON.stringify(list(pA)));
  await waitFor("B: new Presence lists both users", () => pB2.syncs > 0 && sameUsers(pB2, [A, B]), () => JSON.stringify(list(pB2)));
  summary.rejoin = { on_join: rejoin, list_a: list(pA), list_b: list(pB2) };
  step("B joined again", `onJoin ${rejoin.key}; A lists ${users(pA).join(",")}; B lists ${users(pB2).join(",")}`);

  // 4. B disconnects its socket: A's Presence sees the leave.
  const leavesBefore2 = pA.leaves.length;
  await withTimeout("B: disconnect", (resolve) => b.socket.disconnect(() => resolve()));
  step("B disconnected");
  const gone = await waitFor(
    "A: onLeave for B after B's socket.disconnect()",
    () => pA.leaves.slice(leavesBefore2).find((l) => l.key === B && l.current === 0),
    () => `A's leaves ${JSON.stringify(pA.leaves)}; A lists ${JSON.stringify(list(pA))}`,
  );
  await waitFor("A: Presence lists only A after B's disconnect", () => sameUsers(pA, [A]), () => JSON.stringify(list(pA)));
  summary.disconnect = { on_leave: gone, list_a: list(pA) };
  step("A saw B go", `onLeave ${gone.key}; A lists ${users(pA).join(",")}`);

  assert(chA.state === "joined" && a.socket.isConnected(), `A: channel ${chA.state}, connected ${a.socket.isConnected()}: A must stay joined throughout`);
  summary.syncs = { a: pA.syncs, b: pB.syncs + pB2.syncs };
  await withTimeout("A: disconnect", (resolve) => a.socket.disconnect(() => resolve()));
  step("A disconnected");
}

main().then(
  () => {
    clearTimeout(overall);
    summary.ok = true;
    finish(0);
  },
  (err) => finish(1, err),
);
