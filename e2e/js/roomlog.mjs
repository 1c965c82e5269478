// roomlog.mjs runs members of one chatd room with the OFFICIAL `phoenix` npm
// client, unchanged, the way the web page (server/web/app.js) uses it: the
// channel's params are a function, so every rejoin asks for
// {since: <greatest id seen>} once a message was seen. A member may drop its
// socket every --drop-every-ms (the transport is destroyed, as by a network
// loss; phoenix reconnects and rejoins on its own).
//
// Usage:
//
//	node roomlog.mjs --config '{"room":"lobby","stop_body":"...","timeout_ms":60000,
//	  "members":[{"name":"m1","url":"http://127.0.0.1:4001","token":"JWT","drop_every_ms":0}]}'
//
// Once every member has joined it prints "ready" on stderr. It ends when
// every member has seen a message whose body is stop_body (live or in a join
// reply), or at timeout_ms, and prints a JSON summary on stdout: per member,
// every event in arrival order: {"t":"join","since":..,"recovered":..,"ids":[..]}
// for each ok join reply, {"t":"msg","id":..} for each new_msg, plus counts
// of drops, errors and join errors. It exits 0 unless it could not run.

import { Socket } from "phoenix";
import WebSocket from "ws";

function parseArgs(argv) {
  let config = null;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--config" && i + 1 < argv.length) config = argv[++i];
    else usage(`unknown argument ${JSON.stringify(argv[i])}`);
  }
  if (!config) usage("--config is required");
  try {
    return JSON.parse(config);
  } catch (e) {
    usage(`--config is not JSON: ${e.message}`);
  }
}

function usage(msg) {
  process.stderr.write(`roomlog: ${msg}\nusage: node roomlog.mjs --config JSON\n`);
  process.exit(2);
}

const cfg = parseArgs(process.argv.slice(2));
const topic = "room:" + cfg.room;
const members = [];
let finished = false;

function socketEndpoint(url) {
  const u = new URL(url);
  u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
  u.pathname = u.pathname.replace(/\/+$/, "") + "/socket";
  u.search = "";
  return u.toString();
}

function finish(err) {
  if (finished) return;
  finished = true;
  const out = {
    ok: !err,
    error: err ? String(err && err.message ? err.message : err) : undefined,
    members: members.map((m) => ({
      name: m.name,
      saw_stop: m.sawStop,
      drops: m.drops,
      channel_errors: m.channelErrors,
      join_errors: m.joinErrors,
      events: m.events,
    })),
  };
  for (const m of members) {
    try {
      m.socket.disconnect();
    } catch {
      // ending anyway
    }
  }
  // A pipe is written asynchronously: exit once the summary is out.
  process.stdout.write(JSON.stringify(out) + "\n", () => process.exit(0));
}

const overall = setTimeout(() => finish(), cfg.timeout_ms || 60000);
process.on("unhandledRejection", (err) => finish(err));
process.on("uncaughtException", (err) => finish(err));

function checkDone() {
  if (members.length === cfg.members.length && members.every((m) => m.sawStop)) {
    clearTimeout(overall);
    finish();
  }
}

function see(m, msg) {
  if (!msg || typeof msg.id !== "string") return;
  if (m.lastId === null || msg.id > m.lastId) m.lastId = msg.id;
  if (msg.body === cfg.stop_body) m.sawStop = true;
}

function startMember(spec) {
  return new Promise((resolve) => {
    const m = {
      name: spec.name,
      lastId: null,
      sawStop: false,
      drops: 0,
      channelErrors: 0,
      joinErrors: 0,
      events: [],
      joined: false,
    };
    members.push(m);
    const socket = new Socket(socketEndpoint(spec.url), {
      transport: WebSocket,
      params: { token: spec.token },
      reconnectAfterMs: () => 50,
      rejoinAfterMs: () => 200,
    });
    m.socket = socket;
    socket.connect();
    // As the web page: evaluated at every (re)join.
    const ch = socket.channel(topic, () => (m.lastId ? { since: m.lastId } : {}));
    let sinceSent = null;
    ch.on("new_msg", (msg) => {
      m.events.push({ t: "msg", id: msg.id });
      see(m, msg);
      checkDone();
    });
    ch.onError(() => {
      m.channelErrors++;
    });
    const join = ch.join();
    join.receive("ok", (resp) => {
      const ids = ((resp && resp.messages) || []).map((x) => x.id);
      m.events.push({ t: "join", since: sinceSent, recovered: resp ? resp.recovered : undefined, ids });
      for (const x of (resp && resp.messages) || []) see(m, x);
      if (!m.joined) {
        m.joined = true;
        resolve();
      }
      checkDone();
    });
    join.receive("error", () => {
      m.joinErrors++;
    });
    // phoenix evaluates the params function when it sends the join; note
    // the since it asked for by wrapping the push's payload.
    const origPayload = join.payload;
    join.payload = () => {
      const p = origPayload();
      sinceSent = p && p.since ? p.since : null;
      return p;
    };
    if (spec.drop_every_ms > 0) {
      setInterval(() => {
        const t = socket.conn;
        if (t && typeof t.terminate === "function" && t.readyState === 1) {
          m.drops++;
          t.terminate();
        }
      }, spec.drop_every_ms);
    }
  });
}

await Promise.all(cfg.members.map(startMember));
process.stderr.write("ready\n");
