#!/bin/bash
# Measures chatd's publish path with the load tool (cmd/chatload), one
# fresh set of processes per scenario, and prints the figures of
# docs/BENCHMARKS.md ("The publish path"):
#
#   fanout     one node, SQLite: a room of 1,000, 1,200 messages/s
#   rooms      one node, SQLite: 500 rooms of 10, 1 message/s per member
#   cl-rooms   two nodes on one Redis: the same 500 rooms, each room's
#              members spread over both nodes; Redis CPU per message
#   crossnode  two nodes on one Redis: 4 publishers on node1, 1,000 members
#              on node2, 1,000 messages/s; Redis CPU per message
#   relay      two nodes on one Redis: 64 rooms, a publisher on node1 and a
#              member on node2 in each, RELAY_RATE messages/s offered (below
#              what chatd on one core sustains): Redis CPU per message, whose
#              inverse is what one Redis core can relay
#   relay-go   with RELAY_SRC set (a source tree of the same commit as the
#              binary): go test ./cluster -bench RedisPublish in that tree,
#              Redis's relay messages/s without chatd in the way (two cores
#              cannot run Redis at full speed beside two chatd nodes)
#
# Usage: scripts/bench-publish.sh CHATD_BINARY [OUT_DIR]
#
# chatd (every node) runs on core 0, the load tool on core 1, Redis
# unpinned, as docs/BENCHMARKS.md describes. Everything listens on
# 127.0.0.1 from PORT_BASE (default 4700) up. Each scenario publishes for
# DURATION (default 10s); the whole run takes about 1.5 minutes. Results:
# OUT_DIR/<scenario>.json (the load tool's JSON) and .txt (its summary).
#
# Environment: SCENARIOS (default "fanout rooms cl-rooms crossnode relay",
# and relay-go when RELAY_SRC is set), DURATION, RELAY_RATE (default 3000),
# RELAY_SRC, PORT_BASE, CHATLOAD (a chatload
# binary; default: built from this tree), REDIS_SERVER (default
# redis-server), CORE_SERVER / CORE_LOAD (default 0 / 1).
set -euo pipefail

if [ $# -lt 1 ] || [ ! -x "$1" ]; then
	sed -n '2,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
	exit 2
fi
BIN=$(realpath "$1")
OUT=${2:-$(mktemp -d /tmp/bench-publish.XXXXXX)}
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
cd "$(dirname "$0")/.."

RELAY_SRC=${RELAY_SRC:-}
SCENARIOS=${SCENARIOS:-fanout rooms cl-rooms crossnode relay${RELAY_SRC:+ relay-go}}
DURATION=${DURATION:-10s}
RELAY_RATE=${RELAY_RATE:-3000}
PORT_BASE=${PORT_BASE:-4700}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
CORE_SERVER=${CORE_SERVER:-0}
CORE_LOAD=${CORE_LOAD:-1}
REDIS_PORT=$((PORT_BASE + 90))
WORK=$(mktemp -d /tmp/bench-publish-work.XXXXXX)

if [ -z "${CHATLOAD:-}" ]; then
	CHATLOAD=$WORK/chatload
	go build -o "$CHATLOAD" ./cmd/chatload
fi

PIDS=()
cleanup() {
	local p
	for p in "${PIDS[@]}"; do
		kill -TERM "$p" 2>/dev/null || true
	done
	for p in "${PIDS[@]}"; do
		wait "$p" 2>/dev/null || true
	done
	PIDS=()
}
trap 'cleanup; rm -rf "$WORK"' EXIT

# wait_ready URL: until chatd at URL answers /health/ready, at most 30 s.
wait_ready() {
	local i
	for i in $(seq 300); do
		curl -fsS -o /dev/null "$1/health/ready" 2>/dev/null && return 0
		sleep 0.1
	done
	echo "bench-publish: $1 not ready after 30 s" >&2
	return 1
}

start_redis() {
	"$REDIS_SERVER" --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
		--dir "$WORK" --logfile "$WORK/redis.log" &
	PIDS+=($!)
	local i
	for i in $(seq 100); do
		redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	echo "bench-publish: redis on $REDIS_PORT not answering" >&2
	return 1
}

# start_node N REDIS(yes|no): chatd node N (1, 2) on core CORE_SERVER; its
# pid is appended to NODE_PIDS.
start_node() {
	local n=$1 port=$((PORT_BASE + $1)) env=()
	env+=(CHAT_ADDR=127.0.0.1:$port CHAT_NODE_NAME=node$n
		CHAT_DATABASE_URL=$WORK/node$n.db CHAT_LOG_LEVEL=warn
		CHAT_USER_RATE=0 CHAT_MAX_CONNS_PER_USER=0)
	if [ "$2" = yes ]; then
		# No secret (chatload signs dev tokens): dev mode with Redis is
		# asked for by name.
		env+=(CHAT_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0 CHAT_DEV_MODE=true
			CHAT_CLUSTER_ADDR=127.0.0.1:$((PORT_BASE + 10 + n))
			CHAT_CLUSTER_PROFILE=local)
		[ "$n" -gt 1 ] && env+=(CHAT_CLUSTER_JOIN=127.0.0.1:$((PORT_BASE + 11)))
	fi
	env "${env[@]}" taskset -c "$CORE_SERVER" "$BIN" >"$WORK/node$n.log" 2>&1 &
	PIDS+=($!)
	NODE_PIDS+=($!)
	wait_ready "http://127.0.0.1:$port"
}

# run NAME CLUSTER(yes|no) CHATLOAD_ARGS...: fresh processes, one load run.
run() {
	local name=$1 cluster=$2
	shift 2
	NODE_PIDS=()
	local extra=()
	if [ "$cluster" = yes ]; then
		start_redis
		start_node 1 yes
		start_node 2 yes
		sleep 1 # memberlist: node2 joined
		extra+=(-redis-addr "127.0.0.1:$REDIS_PORT")
	else
		start_node 1 no
	fi
	local pids
	pids=$(IFS=,; echo "${NODE_PIDS[*]}")
	echo "== $name: chatload $* -server-pid $pids ${extra[*]}" >&2
	taskset -c "$CORE_LOAD" "$CHATLOAD" "$@" -duration "$DURATION" -server-pid "$pids" \
		"${extra[@]}" -json "$OUT/$name.json" | tee "$OUT/$name.txt" || true
	cleanup
}

U1=ws://127.0.0.1:$((PORT_BASE + 1))
U2=ws://127.0.0.1:$((PORT_BASE + 2))
for s in $SCENARIOS; do
	case $s in
	fanout) run fanout no -scenario fanout -url "$U1" -members 1000 -rate 1200 ;;
	rooms) run rooms no -scenario rooms -url "$U1" -rooms 500 -members 10 -rate 5000 ;;
	cl-rooms) run cl-rooms yes -scenario rooms -url "$U1,$U2" -rooms 500 -members 10 -rate 5000 ;;
	crossnode) run crossnode yes -scenario crossnode -url "$U1,$U2" -members 1000 -publishers 4 -rate 1000 ;;
	relay) run relay yes -scenario crossnode -url "$U1,$U2" -rooms 64 -members 2 -publishers 64 -rate "$RELAY_RATE" ;;
	relay-go)
		[ -n "$RELAY_SRC" ] || { echo "bench-publish: relay-go needs RELAY_SRC" >&2; exit 2; }
		echo "== relay-go: (cd $RELAY_SRC && go test ./cluster -run '^\$' -bench RedisPublish -benchtime 2s)" >&2
		(cd "$RELAY_SRC" && go test ./cluster -run '^$' -bench RedisPublish -benchtime 2s) | tee "$OUT/relay-go.txt" ;;
	*) echo "bench-publish: unknown scenario $s" >&2; exit 2 ;;
	esac
done

echo
echo "chatd $BIN (sha256 $(sha256sum "$BIN" | cut -c1-12)); results in $OUT"
if command -v jq >/dev/null; then
	printf '%-10s %12s %12s %9s %9s %9s %14s %12s %8s\n' scenario acked/s deliveries/s p50-ms p99-ms max-ms "cpu-ms/1000dl" "redis-µs/msg" lost
	for s in $SCENARIOS; do
		[ -f "$OUT/$s.json" ] || continue
		jq -r --arg s "$s" '[$s, (.messages_acked_per_second // 0 | floor), (.deliveries_per_second // 0 | floor),
			(.latency_p50_ms // 0 | .*100 | round/100), (.latency_p99_ms // 0 | .*100 | round/100), (.latency_max_ms // 0 | .*100 | round/100),
			(.server_cpu_ms_per_1000_deliveries // 0 | .*100 | round/100), (.redis_cpu_us_per_acked_message // "-" | if type == "number" then .*10 | round/10 else . end),
			(.deliveries_lost // 0)] | @tsv' "$OUT/$s.json" |
			awk -F'\t' '{printf "%-10s %12s %12s %9s %9s %9s %14s %12s %8s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9}'
	done
fi
