// rooms.mjs drives the OFFICIAL `phoenix` npm client against a chatd whose
// rooms are not all public, and reports what each socket saw:
//
//   - writer: a token with rooms ["team-42-*"], connected with the
//     client's authToken option (the token goes as a WebSocket subprotocol,
//     not in the URL);
//   - reader: a token with read_rooms [ROOM], connected with ?token=;
//   - outsider: a token with no room claims.
//
// Usage:
//
//	node rooms.mjs --url http://127.0.0.1:4000 --writer JWT --reader JWT --outsider JWT
//	               [--room team-42-news] [--timeout-ms 15000]
//
// It prints a JSON summary on stdout: every reply it got and every new_msg
// each socket received; the Go test (e2e/permissions_test.go) judges them.
// "ok": false and exit 1 mean the script itself could not run its steps.

import { Socket } from "phoenix";
import WebSocket from "ws";

const STEP_TIMEOUT_MS = 3000;

function parseArgs(argv) {
  const opts = { url: "", writer: "", reader: "", outsider: "", room: "team-42-news", timeoutMs: 15000 };
  const names = { "--url": "url", "--writer": "writer", "--reader": "reader", "--outsider": "outsider", "--room": "room", "--timeout-ms": "timeoutMs" };
  for (let i = 0; i < argv.length; i += 2) {
    const key = names[argv[i]];
    if (!key || i + 1 >= argv.length) usage(`bad argument ${JSON.stringify(argv[i])}`);
    opts[key] = key === "timeoutMs" ? Number(argv[i + 1]) : argv[i + 1];
  }
  if (!opts.url || !opts.writer || !opts.reader || !opts.outsider) usage("--url, --writer, --reader and --outsider are required");
  return opts;
}

function usage(msg) {
  process.stderr.write(`rooms: ${msg}\n`);
  process.exit(2);
}

const opts = parseArgs(process.argv.slice(2));
const summary = { ok: false, steps: [] };
const sockets = [];

function finish(code, err) {
  if (err) {
    summary.ok = false;
    summary.error = err instanceof Error ? err.message : String(err);
    process.stderr.write(`rooms: FAIL: ${summary.error}\n`);
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

setTimeout(() => finish(1, new Error(`timed out after ${opts.timeoutMs} ms; last step: ${summary.steps.at(-1) ?? "(none)"}`)), opts.timeoutMs);
process.on("unhandledRejection", (err) => finish(1, err));
process.on("uncaughtException", (err) => finish(1, err));

function withTimeout(what, executor) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what}: no answer within ${STEP_TIMEOUT_MS} ms`)), STEP_TIMEOUT_MS);
    executor((v) => { clearTimeout(timer); resolve(v); }, (e) => { clearTimeout(timer); reject(e); });
  });
}

function endpoint(url) {
  const u = new URL(url);
  u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
  u.pathname = "/socket";
  u.search = "";
  return u.toString();
}

// open connects a socket; how is {authToken} or {params}.
function open(label, how) {
  const socket = new Socket(endpoint(opts.url), {
    transport: WebSocket,
    timeout: STEP_TIMEOUT_MS,
    reconnectAfterMs: () => 60000,
    rejoinAfterMs: () => 60000,
    ...how,
  });
  sockets.push(socket);
  const opened = withTimeout(`${label}: connect`, (resolve, reject) => {
    socket.onOpen(() => resolve());
    socket.onError(() => reject(new Error(`${label}: connect failed`)));
  });
  socket.connect();
  return { socket, opened };
}

// join resolves with {status, response} whatever the answer.
function join(channel) {
  return withTimeout(`join ${channel.topic}`, (resolve) => {
    channel.join()
      .receive("ok", (response) => resolve({ status: "ok", response }))
      .receive("error", (response) => resolve({ status: "error", response }))
      .receive("timeout", () => resolve({ status: "timeout" }));
  });
}

function push(channel, body) {
  return withTimeout(`push on ${channel.topic}`, (resolve) => {
    channel.push("new_msg", { body })
      .receive("ok", (response) => resolve({ status: "ok", response }))
      .receive("error", (response) => resolve({ status: "error", response }))
      .receive("timeout", () => resolve({ status: "timeout" }));
  });
}

// channel joins topic on socket, recording the new_msg bodies it gets.
function channel(socket, topic, seen) {
  const ch = socket.channel(topic, {});
  ch.on("new_msg", (m) => seen.push(m));
  return ch;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function main() {
  const room = "room:" + opts.room;
  const writer = open("writer", { authToken: opts.writer });
  const reader = open("reader", { params: { token: opts.reader } });
  const outsider = open("outsider", { params: { token: opts.outsider } });
  await Promise.all([writer.opened, reader.opened, outsider.opened]);
  summary.writer_url_has_token = writer.socket.endPointURL().includes("token=");
  summary.writer_protocol = writer.socket.conn && writer.socket.conn.protocol;
  summary.steps.push("connected");

  summary.writer_seen = [];
  summary.reader_seen = [];
  const wch = channel(writer.socket, room, summary.writer_seen);
  const rch = channel(reader.socket, room, summary.reader_seen);
  summary.writer_join = await join(wch);
  summary.reader_join = await join(rch);
  summary.steps.push("joined");

  const och = outsider.socket.channel(room, {});
  summary.outsider_join = await join(och);
  // A refused channel would retry its join: stop it, as an app would.
  och.leave();

  summary.reader_push = await push(rch, "from the reader");
  summary.writer_push = await push(wch, "from the writer");
  // The reader's push, had it been broadcast, would come before the
  // writer's message on both sockets; wait for the writer's, and a moment.
  const deadline = Date.now() + STEP_TIMEOUT_MS;
  while (Date.now() < deadline && (summary.writer_seen.length < 1 || summary.reader_seen.length < 1)) await sleep(10);
  await sleep(300);
  summary.steps.push("pushed");

  // The pattern team-42-* opens no other team, and the public room stays
  // open to everyone.
  summary.writer_other_team_join = await join(writer.socket.channel("room:team-43-news", {}));
  summary.outsider_lobby_join = await join(outsider.socket.channel("room:lobby", {}));
  summary.steps.push("done");
  summary.ok = true;
  finish(0);
}

main().catch((err) => finish(1, err));
