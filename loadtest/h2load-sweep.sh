#!/usr/bin/env bash
# h2load-sweep.sh: the server's maximum Decide rate with a light client.
#
# vitrine-loadtest spends more CPU per call than the server, so with the
# server on one core and the load generator on the other the generator can
# be the ceiling. h2load (Debian's nghttp2-client, written in C, one event
# loop) sends one fixed, pre-encoded gRPC Decide request over a few HTTP/2
# connections, for a fraction of that CPU. This script sweeps the load
# upward and, for every run, prints one line:
#
#   step  try  sent  answered  non200  shed  p50  p99  p99.9 (us)
#   server_cpu_us_per_call  server_core%  others%  client_core%  cothers%
#   load_average  rate/s
#
# Two modes (MODE):
# - closed (default): each step is a number of streams per connection kept
#   busy (CONNS x STEP calls always open: a new call as soon as one is
#   answered). The rate is what the server sustains at that concurrency,
#   with honest per-call latency. Use this for the maximum rate: it is the
#   only mode where h2load's own pacing adds nothing.
# - rate: each step is a fixed request rate (`--rps`, split over CONNS
#   connections, STREAMS streams each). Beware: h2load's rate timer ticks
#   at most every 10 ms (`max(0.01, 1/rps)` in its source), so every
#   connection sends its calls in bursts of rps/100 every 10 ms, and the
#   connections tick together: the latency then includes draining a burst
#   of rate/100 calls, a harsher arrival pattern than vitrine-loadtest's
#   evenly paced schedule.
#
# - Latency is h2load's own per-request time (`--log-file`: from the
#   request's submission to the end of its response, trailers included),
#   over the whole run (no warm-up: h2load counts only the measured period,
#   and the server's counters must be compared with all of it). In rate
#   mode a stalled server shows up as fewer calls sent than scheduled (the
#   `sent` column; a run that sent < 99% of its schedule fails).
# - Every answer is checked: `non200` counts HTTP statuses other than 200;
#   gRPC's status is in the trailers, which h2load does not parse, so the
#   server's own counters decide it: the change of
#   `vitrine_decide_duration_seconds_count` (successful decisions) over the
#   run must be at least the calls h2load saw answered and at most
#   CONNS x streams more (calls still open when h2load stops), and
#   `vitrine_requests_shed_total` must not move. `answered` is that change.
# - Server CPU is utime+stime of the server process (all threads,
#   /proc/PID/stat) over the whole h2load run divided by the decisions it
#   made; `server_core%` is that CPU over the run's wall time (100% = the
#   server's core saturated). `others%` is the rest of the server core's
#   busy time (/proc/stat cpuSERVER_CPU minus the server): other processes
#   and interrupts that took the server's core, the noise of a shared
#   machine. `client_core%` is h2load's (user+sys)/wall, `cothers%` the
#   same as others% for the client's core (CLIENT_CPU): a process there
#   delays every answer the client has not read yet.
#
# A step passes when, in most of its tries, p99 < the bound and no error
# (in rate mode also no shortfall); the sweep stops at the first step that
# fails (KEEP_GOING=1: runs every step) and prints the highest rate of a
# passing run.
#
# Usage (server on CPU 0, client on CPU 1, data seeded as in README
# "Through gRPC"):
#
#   taskset -c 0 target/release/vitrine serve --grpc-addr 127.0.0.1:52051 \
#       --metrics-addr 127.0.0.1:19988 --rules-dir /tmp/max/rules --data-dir /tmp/max/data &
#   SERVER_PID=$!
#   target/release/vitrine-loadtest seed --addr 127.0.0.1:52051 --shops 3 --visitors 100000
#   SERVER_PID=$SERVER_PID loadtest/h2load-sweep.sh 1 2 4 8 16 32          # closed: streams/connection
#   SERVER_PID=$SERVER_PID MODE=rate loadtest/h2load-sweep.sh 5000 10000   # fixed rates
#   # on a shared machine: the server's threads and h2load at nice -10
#   renice -n -10 -p $(ls /proc/$SERVER_PID/task)
#   SERVER_PID=$SERVER_PID CLIENT_NICE=-10 KEEP_GOING=1 loadtest/h2load-sweep.sh 1 2 4 8
#
# Settings (environment, with defaults):
#   GRPC=127.0.0.1:52051  METRICS=127.0.0.1:19988  SERVER_PID (required)
#   MODE=closed  DURATION=10 (s)  TRIES=3  CONNS=4  STREAMS=64 (rate mode)
#   CLIENT_CPU=1 (taskset for h2load; empty = no pinning)
#   SERVER_CPU=0 (the core the server is pinned to, for others%)
#   CLIENT_NICE= (e.g. -10: h2load's nice value; with the server's threads
#   reniced too, `renice -n -10 -p $(ls /proc/$SERVER_PID/task)`, other
#   work on a shared machine takes far less of either core)
#   KEEP_GOING=  P99_BOUND_US=1000  SHOP=load-0  VISITOR=v-4242  ITEM=sku-0001
#   OUT=/tmp/h2load-sweep (logs and the request body)
#
# The request is one visitor's item-page Decide (a seeded, known visitor
# with history): every call decides the same visitor, so the index lookups
# stay in cache; decision code is a few us of a call's 20-50 us of server
# CPU (README "Performance"), so the transport dominates either way.
set -euo pipefail

MODE=${MODE:-closed}
GRPC=${GRPC:-127.0.0.1:52051}
METRICS=${METRICS:-127.0.0.1:19988}
SERVER_PID=${SERVER_PID:?set SERVER_PID to the vitrine serve process id}
DURATION=${DURATION:-10}
TRIES=${TRIES:-3}
CONNS=${CONNS:-4}
STREAMS=${STREAMS:-64}
CLIENT_CPU=${CLIENT_CPU-1}
CLIENT_NICE=${CLIENT_NICE:-}
SERVER_CPU=${SERVER_CPU:-0}
P99_BOUND_US=${P99_BOUND_US:-1000}
KEEP_GOING=${KEEP_GOING:-}
SHOP=${SHOP:-load-0}
VISITOR=${VISITOR:-v-4242}
ITEM=${ITEM:-sku-0001}
OUT=${OUT:-/tmp/h2load-sweep}

[ $# -gt 0 ] || { echo "usage: SERVER_PID=PID [MODE=closed|rate] $0 STEP [STEP...]" >&2; exit 2; }
case $MODE in closed | rate) ;; *) echo "MODE must be closed or rate" >&2; exit 2 ;; esac
command -v h2load >/dev/null || { echo "h2load not found: apt-get install -y nghttp2-client" >&2; exit 2; }
[ -r "/proc/$SERVER_PID/stat" ] || { echo "no process $SERVER_PID" >&2; exit 2; }
mkdir -p "$OUT"

# The gRPC message: a 5-byte prefix (not compressed, big-endian length)
# and the protobuf DecideRequest {shop, visitor, context {page, item,
# region, device, channel}}.
BODY="$OUT/decide.bin"
python3 - "$BODY" "$SHOP" "$VISITOR" "$ITEM" <<'PY'
import struct, sys
def field(num, data):
    data = data.encode()
    if len(data) >= 128:
        sys.exit("each field must be shorter than 128 bytes")
    return bytes([num << 3 | 2, len(data)]) + data
path, shop, visitor, item = sys.argv[1:]
context = field(1, "item") + field(2, item) + field(3, "north") + field(4, "mobile") + field(5, "web")
msg = field(1, shop) + field(2, visitor) + bytes([3 << 3 | 2, len(context)]) + context
open(path, "wb").write(b"\0" + struct.pack(">I", len(msg)) + msg)
PY

# Sum of the samples of a metric family (all label sets).
metric() {
    curl -sf "http://$METRICS/metrics" | awk -v name="$1" \
        '$1 == name || index($1, name "{") == 1 { s += $NF } END { printf "%d\n", s }'
}
server_ticks() { awk '{ print $14 + $15 }' "/proc/$SERVER_PID/stat"; }
# Busy ticks of core $1 (all but idle and iowait); 0 without a core.
core_ticks() {
    if [ -z "$1" ]; then echo 0; return; fi
    awk -v c="cpu$1" '$1 == c { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat
}
HZ=$(getconf CLK_TCK)

# One run of `step`; prints its line, writes its rate to FILE.rate and
# returns 0 when it passes.
run() {
    local step=$1 try=$2 rate=0 streams=$STREAMS load_args=()
    if [ "$MODE" = rate ]; then
        rate=$step
        load_args=(--rps "$(((rate + CONNS - 1) / CONNS))")
    else
        streams=$step
    fi
    local log="$OUT/$MODE-$step-t$try.log" txt="$OUT/$MODE-$step-t$try.txt"
    local load c0 s0 t0 k0 j0 w0 c1 s1 t1 k1 j1 w1 pin=()
    load=$(cut -d' ' -f1 /proc/loadavg)
    if [ -n "$CLIENT_CPU" ]; then pin=(taskset -c "$CLIENT_CPU"); fi
    if [ -n "$CLIENT_NICE" ]; then pin=(nice -n "$CLIENT_NICE" "${pin[@]}"); fi
    c0=$(metric vitrine_decide_duration_seconds_count)
    s0=$(metric vitrine_requests_shed_total)
    t0=$(server_ticks)
    k0=$(core_ticks "$SERVER_CPU")
    j0=$(core_ticks "$CLIENT_CPU")
    w0=$(date +%s.%N)
    "${pin[@]}" /usr/bin/time -f 'CLIENT_CPU %U %S %e' h2load -t 1 -c "$CONNS" -m "$streams" \
        "${load_args[@]}" -D "$DURATION" \
        -H 'content-type: application/grpc' -H 'te: trailers' -d "$BODY" \
        --log-file "$log" "http://$GRPC/vitrine.v1.Decision/Decide" >"$txt" 2>&1 || true
    w1=$(date +%s.%N)
    t1=$(server_ticks)
    k1=$(core_ticks "$SERVER_CPU")
    j1=$(core_ticks "$CLIENT_CPU")
    c1=$(metric vitrine_decide_duration_seconds_count)
    s1=$(metric vitrine_requests_shed_total)
    python3 - "$log" "$txt" "$step" "$rate" "$try" "$DURATION" "$P99_BOUND_US" "$((CONNS * streams))" \
        $((c1 - c0)) $((s1 - s0)) $((t1 - t0)) $((k1 - k0)) $((j1 - j0)) "$HZ" "$w0" "$w1" "$load" <<'PY'
import re, sys
log, txt, step, rate, tr, dur, bound, open_max, calls, shed, ticks, core, ccore, hz, w0, w1, load = sys.argv[1:]
rate, dur, bound, open_max = int(rate), float(dur), float(bound), int(open_max)
calls, shed, ticks, hz = int(calls), int(shed), int(ticks), int(hz)
wall = float(w1) - float(w0)
lat, non200 = [], 0
for line in open(log):
    parts = line.split("\t")
    if len(parts) < 3:
        continue
    if parts[1] != "200":
        non200 += 1
    lat.append(int(parts[2]))
lat.sort()
def q(p):
    return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")
out = open(txt).read()
m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", out)
succeeded = failed = 0
if m:
    succeeded, failed = int(m.group(4)), int(m.group(5)) + int(m.group(6)) + int(m.group(7))
cu = re.search(r"CLIENT_CPU ([\d.]+) ([\d.]+) ([\d.]+)", out)
client = (float(cu.group(1)) + float(cu.group(2))) / float(cu.group(3)) * 100 if cu else float("nan")
client_s = float(cu.group(1)) + float(cu.group(2)) if cu else 0.0
cpu_us = ticks / hz * 1e6 / calls if calls else float("nan")
server_core = ticks / hz / wall * 100
others = max(0, int(core) - ticks) / hz / wall * 100
cothers = max(0.0, int(ccore) / hz - client_s) / wall * 100 if int(ccore) else float("nan")
sent = len(lat)
schedule = rate * dur if rate else sent
# Every call h2load saw answered must be a successful decision on the
# server (which may also have answered calls still open when h2load
# stopped); no call shed.
unmatched = 0 if 0 <= calls - succeeded <= open_max else abs(calls - succeeded)
errors = unmatched + shed + failed
ok = sent > 0 and sent >= 0.99 * schedule and non200 == 0 and errors == 0 and q(0.99) < bound
achieved = sent / dur
print(f"{step:>6} {tr} {sent:>7} {calls:>7} {non200:>4} {shed:>4} {q(0.5):>6} {q(0.99):>6} {q(0.999):>6}"
      f" {cpu_us:8.1f} {server_core:5.1f}% {others:5.1f}% {client:5.1f}% {cothers:5.1f}% {load:>5} {achieved:8.0f} {'pass' if ok else 'FAIL'}"
      + ("" if errors == 0 else f" (h2load succeeded {succeeded}, failed {failed}; server decisions {calls}, shed {shed})"),
      flush=True)
open(txt + ".rate", "w").write(f"{achieved:.0f}\n")
sys.exit(0 if ok else 1)
PY
}

echo "  step t    sent answered n200 shed    p50    p99  p99.9 cpu/call server others client cothers  load   rate/s"
best=0
for step in "$@"; do
    passes=0
    for try in $(seq 1 "$TRIES"); do
        if run "$step" "$try"; then
            passes=$((passes + 1))
            r=$(cat "$OUT/$MODE-$step-t$try.txt.rate")
            if [ "$r" -gt "$best" ]; then best=$r; fi
        fi
    done
    if [ $((passes * 2)) -le "$TRIES" ]; then
        echo "step $step failed ($passes of $TRIES tries passed)"
        [ -n "$KEEP_GOING" ] || break
    fi
done
echo "highest rate of a passing run: $best/s (p99 < ${P99_BOUND_US} us, no errors; $TRIES tries per step, most must pass)"
