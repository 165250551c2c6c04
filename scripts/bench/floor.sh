#!/usr/bin/env bash
# floor.sh — issue 16's floor on the pairs shape: a bare grpc-go relay
# (cmd/grpcfloor --mode relay), the same relay with an fdatasync per group
# commit (--fsync-file), and chatd, interleaved (A B C, C B A, A B C, ...),
# each run on a fresh server (chatd on a fresh copy of the set-up data),
# and a table of medians. docs/performance.md, "The floor: a bare grpc-go
# relay on the same shape", has the figures and what they mean.
#
# Given built binaries (go build -o bin/X ./cmd/X for chatd, grpcfloor,
# chatbench):
#
#   scripts/bench/floor.sh                      # 500, 1000, 2000 msg/s, 3 rounds, 20 s each
#   RATES=1000 ROUNDS=1 scripts/bench/floor.sh  # one quick round
#   PROFILE=1000 scripts/bench/floor.sh         # first, one extra run of every variant
#                                               # at 1,000 msg/s with a 10 s CPU profile
#                                               # ($WORK/profile-<variant>-1000.pb.gz;
#                                               # not counted in the table)
#
# Environment: BIN (binaries, default bin), WORK (scratch directory on the
# disk to measure, default /tmp/chatd-floor; holds data0, the chatd data
# directory with 1,000 users set up once, created when missing, ~2.5 min),
# RATES, ROUNDS, DURATION (sending phase per run), VARIANTS (default
# "relay fsync chatd"; "chatd0" runs $BIN/chatd0, another chatd build, as
# chatd is run, for a before/after comparison), LINGER (commit linger of the fsync relay, default
# chatd's 1ms), PROFILE (a rate: profile every variant there first),
# PROFILE_SECONDS (default 10; the profile starts 8 s into the run, so
# DURATION must be at least 8 s longer). Ports: chatd 21090/21080
# (pprof 21070), grpcfloor 21490/21480, or CHATD_GRPC, CHATD_HTTP,
# CHATD_PPROF, FLOOR_GRPC, FLOOR_HTTP (ports); each must be free. Output: one JSON report per run in
# $WORK/runs/ and the table on stdout (also $WORK/table.md).
set -euo pipefail

BIN=$(cd "${BIN:-bin}" && pwd)
WORK=${WORK:-/tmp/chatd-floor}
RATES=${RATES:-"500 1000 2000"}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-20s}
VARIANTS=${VARIANTS:-"relay fsync chatd"}
LINGER=${LINGER:-1ms}
PROFILE=${PROFILE:-}
PROFILE_SECONDS=${PROFILE_SECONDS:-10}
for b in chatd grpcfloor chatbench; do
	[[ -x $BIN/$b ]] || { echo "floor.sh: $BIN/$b missing: go build -o bin/$b ./cmd/$b" >&2; exit 1; }
done
mkdir -p "$WORK/runs"
CG=${CHATD_GRPC:-21090} CH=${CHATD_HTTP:-21080} CP=${CHATD_PPROF:-21070} FG=${FLOOR_GRPC:-21490} FH=${FLOOR_HTTP:-21480}
for port in "$CG" "$CH" "$CP" "$FG" "$FH"; do
	if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
		echo "floor.sh: port $port is in use (set CHATD_GRPC, CHATD_HTTP, CHATD_PPROF, FLOOR_GRPC, FLOOR_HTTP)" >&2
		exit 1
	fi
done
CHATD_FLAGS=(--grpc-addr "127.0.0.1:$CG" --http-addr "127.0.0.1:$CH" --pprof-addr "127.0.0.1:$CP"
	--unary-rate 100000 --unary-burst 100000 --frame-rate 100000 --frame-burst 100000
	--max-streams-per-device 32 --log-level warn)

PID=
stop_server() {
	if [[ -n $PID ]]; then
		kill "$PID" 2>/dev/null || true
		wait "$PID" 2>/dev/null || true
		PID=
	fi
}
trap stop_server EXIT

wait_up() { # $1: metrics URL
	for _ in $(seq 200); do
		curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
		sleep 0.1
	done
	echo "floor.sh: server at $1 did not come up" >&2
	exit 1
}

# The chatd data of 1,000 users, set up once (argon2id: ~2.5 min), when a
# chatd variant runs.
if [[ " $VARIANTS " == *" chatd"* && ! -d $WORK/data0 ]]; then
	echo "floor.sh: setting up 1,000 users in $WORK/data0" >&2
	"$BIN/chatd" "${CHATD_FLAGS[@]}" --data-dir "$WORK/data0.tmp" >"$WORK/setup-chatd.log" 2>&1 &
	PID=$!
	wait_up "http://127.0.0.1:$CH/metrics"
	"$BIN/chatbench" setup --users 1000 --servers "127.0.0.1:$CG" --token-cache "$WORK/tokens.json" --quiet >"$WORK/setup.log" 2>&1
	stop_server
	mv "$WORK/data0.tmp" "$WORK/data0"
fi

run() { # $1 variant, $2 rate, $3 round ("profile": a profiled run, not in the table)
	local v=$1 rate=$2 round=$3 grpc http pprof tokens
	case $v in
	chatd | chatd0)
		rm -rf "$WORK/copy" && cp -r "$WORK/data0" "$WORK/copy"
		"$BIN/$v" "${CHATD_FLAGS[@]}" --data-dir "$WORK/copy" >"$WORK/server.log" 2>&1 &
		grpc=127.0.0.1:$CG http=127.0.0.1:$CH pprof=127.0.0.1:$CP tokens=$WORK/tokens.json ;;
	relay | fsync)
		local extra=()
		[[ $v == fsync ]] && extra=(--fsync-file "$WORK/relay.log" --commit-linger "$LINGER")
		# --heartbeat: chatd's default interval (presence.DefaultHeartbeatInterval)
		"$BIN/grpcfloor" --mode relay --chatd-options --heartbeat 25s --grpc-addr "127.0.0.1:$FG" --http-addr "127.0.0.1:$FH" \
			"${extra[@]}" >"$WORK/server.log" 2>&1 &
		grpc=127.0.0.1:$FG http=127.0.0.1:$FH pprof=127.0.0.1:$FH tokens=$WORK/tokens-floor.json ;;
	esac
	PID=$!
	wait_up "http://$http/metrics"
	local io0 out=$WORK/runs/$v-$rate-$round
	[[ $round == profile ]] && out=$WORK/profile-$v-$rate
	io0=$(grep -E '^sysc[rw]' "/proc/$PID/io" | awk '{print $2}' | paste -sd' ')
	local prof=
	if [[ $round == profile ]]; then
		(sleep 8 && curl -fsS -o "$WORK/profile-$v-$rate.pb.gz" "http://$pprof/debug/pprof/profile?seconds=$PROFILE_SECONDS") &
		prof=$!
	fi
	"$BIN/chatbench" pairs --pairs 500 --rate "$rate" --duration "$DURATION" --servers "$grpc" \
		--metrics "http://$http/metrics" --server-pid "$PID" --token-cache "$tokens" \
		--quiet --json "$out.json" >"$out.txt" 2>&1 || echo "floor.sh: chatbench failed, see $out.txt" >&2
	[[ -z $prof ]] || wait "$prof" || true
	local io1
	io1=$(grep -E '^sysc[rw]' "/proc/$PID/io" | awk '{print $2}' | paste -sd' ')
	echo "$io0 $io1" >"$out.io" # syscr syscw before, after
	stop_server
	echo "floor.sh: round $round, $rate msg/s, $v: $(grep -E '^CPU per message' "$out.txt" || echo failed)" >&2
}

fwd=($VARIANTS)
if [[ -n $PROFILE ]]; then
	for v in "${fwd[@]}"; do run "$v" "$PROFILE" profile; done
fi
rev=()
for ((i = ${#fwd[@]} - 1; i >= 0; i--)); do rev+=("${fwd[i]}"); done
for ((round = 1; round <= ROUNDS; round++)); do
	order=("${fwd[@]}")
	((round % 2 == 0)) && order=("${rev[@]}")
	for rate in $RATES; do
		for v in "${order[@]}"; do run "$v" "$rate" "$round"; done
	done
done

python3 - "$WORK/runs" "$RATES" "$VARIANTS" <<'PY' | tee "$WORK/table.md"
import json, os, statistics, sys
runs, rates, variants = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
names = {"relay": "bare grpc-go relay", "fsync": "relay + fdatasync per commit", "chatd": "chatd", "chatd0": "chatd (before: bin/chatd0)"}
def med(xs): return statistics.median(xs) if xs else float("nan")
print("| msg/s | server | accepted msg/s [runs] | p50 ms | p99 ms [runs] (median) | server CPU ms per msg [runs] (median) | chatbench CPU ms per msg | msgs per fsync | server writes / reads per msg | load avg |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for rate in rates:
    for v in variants:
        rs = []
        for f in sorted(os.listdir(runs)):
            if f.startswith(f"{v}-{rate}-") and f.endswith(".json"):
                r = json.load(open(os.path.join(runs, f)))
                io = open(os.path.join(runs, f[:-5] + ".io")).read().split()
                r["_io"] = [int(x) for x in io]
                rs.append(r)
        if not rs:
            continue
        acc = [round(r.get("accepted_per_s", 0)) for r in rs]
        p50 = [r["delivery_latency"]["p50_ms"] for r in rs]
        p99 = [r["delivery_latency"]["p99_ms"] for r in rs]
        cpu = [r.get("server_cpu_ms_per_msg", 0) for r in rs]
        ccpu = [r.get("client_cpu_ms_per_msg", 0) for r in rs]
        batch = [r["server"].get("msgs_per_batch", 0) for r in rs if r.get("server")]
        wr = [(r["_io"][3] - r["_io"][1]) / max(r["accepted"], 1) for r in rs]
        rd = [(r["_io"][2] - r["_io"][0]) / max(r["accepted"], 1) for r in rs]
        load = [r["machine"]["loadavg1_end"] for r in rs]
        errs = sum(sum(r.get("errors", {}).values()) for r in rs)
        miss = sum(r["expected_deliveries"] - (r["delivered"] - r["foreign_deliveries"]) for r in rs)
        note = "" if errs == 0 and miss == 0 else f" ({errs} errors, {miss} missing deliveries)"
        mb = f"{med(batch):.1f}" if any(batch) else "—"
        print(f"| {rate} | {names.get(v, v)}{note} | {acc} | {med(p50):.1f} | {[round(x) for x in p99]} (**{med(p99):.0f}**) "
              f"| {[round(x, 3) for x in cpu]} (**{med(cpu):.3f}**) | {med(ccpu):.3f} | {mb} | {med(wr):.2f} / {med(rd):.2f} "
              f"| {min(load):.1f}–{max(load):.1f} |")
PY
