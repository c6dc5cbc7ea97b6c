#!/usr/bin/env bash
# cluster-bench.sh: the figures of issue 13 ("Measure") in one run, on one
# machine: Tansu (in memory) and three release `vitrine serve` replicas.
#
#   1. push propagation: Rules/Push on replica 0 -> every replica serves it;
#   2. claim latency through the claims topic at 100 and 1000 claims/s,
#      and the same rates against ONE embedded server (no --kafka-brokers:
#      the local claims journal), in the same run;
#   3. claims/s one partition sustains (closed loop on one benefit);
#   4. what --shops saves: RSS of a replica holding 1 of 3 shops vs all 3,
#      both caught up with the same behavior topic;
#   5. decisions as exposures: Decide on replica 0 -> every replica counts
#      the visitor in offered(...) (the decisions topic, issue 14).
#
# Usage: loadtest/cluster-bench.sh   (from anywhere; builds first)
# Knobs (environment): NO_BUILD=1, KEEP=1 (keep the work dir and logs),
# KAFKA_PORT (19092), PUSHES (50), OFFERS (200), CLAIM_DURATION (10s), MAX_DURATION (10s),
# CONCURRENCY (64), EVENTS_PER_SHOP (200000), VISITORS_PER_SHOP (50000).
# Everything the script starts is killed on exit (trap).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
VITRINE=$TARGET/release/vitrine
LOADTEST=$TARGET/release/vitrine-loadtest
KAFKA_PORT=${KAFKA_PORT:-19092}
BROKER=127.0.0.1:$KAFKA_PORT
PUSHES=${PUSHES:-50}
OFFERS=${OFFERS:-200}
CLAIM_DURATION=${CLAIM_DURATION:-10s}
MAX_DURATION=${MAX_DURATION:-10s}
CONCURRENCY=${CONCURRENCY:-64}
EVENTS_PER_SHOP=${EVENTS_PER_SHOP:-200000}
VISITORS_PER_SHOP=${VISITORS_PER_SHOP:-50000}

WORK=$(mktemp -d /tmp/vitrine-cluster-bench.XXXXXX)
PIDS=()
cleanup() {
    local rc=$?
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n "${KEEP:-}" || $rc -ne 0 ]]; then
        echo "work dir and logs kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '\n== %s ==\n' "$*"; }
die() { echo "cluster-bench: $*" >&2; exit 1; }

if [[ -z "${NO_BUILD:-}" ]]; then
    (cd "$ROOT" && CARGO_INCREMENTAL=0 cargo build --release -p vitrine -p vitrine-loadtest)
fi
command -v tansu >/dev/null || die "tansu is not on PATH"
[[ -x $VITRINE && -x $LOADTEST ]] || die "no release binaries in $TARGET/release"

# start NAME PIDVAR CMD...: runs CMD in the background, its output in $WORK/NAME.log.
start() {
    local name=$1 var=$2
    shift 2
    "$@" >"$WORK/$name.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    printf -v "$var" '%s' "$pid"
}

# stop PID: ends one process this script started.
stop() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# replica NAME GRPC_PORT METRICS_PORT PIDVAR [extra serve flags...]
replica() {
    local name=$1 grpc=$2 metrics=$3 var=$4
    shift 4
    mkdir -p "$WORK/$name/data" "$WORK/$name/rules"
    start "$name" "$var" "$VITRINE" serve \
        --grpc-addr "127.0.0.1:$grpc" --metrics-addr "127.0.0.1:$metrics" \
        --data-dir "$WORK/$name/data" --rules-dir "$WORK/$name/rules" "$@"
}

# wait_ready NAME METRICS_PORT PID: until /readyz answers 200 (at most 600 s).
wait_ready() {
    local name=$1 port=$2 pid=$3 i
    for ((i = 0; i < 6000; i++)); do
        curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || { tail -20 "$WORK/$name.log" >&2; die "$name exited"; }
        sleep 0.1
    done
    tail -20 "$WORK/$name.log" >&2
    die "$name not ready after 600 s"
}

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# metric_sum PORT NAME: the sum of every series of a metric.
metric_sum() {
    curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m || index($1, m "{") == 1 { s += $2 } END { printf "%d\n", s }'
}

say "Tansu on $BROKER (in memory)"
start tansu TANSU tansu broker --storage-engine memory://tansu/ \
    --listener-url "tcp://$BROKER" --advertised-listener-url "tcp://$BROKER"
for ((i = 0; i < 100; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null && break
    sleep 0.1
done
# Vitrine creates its rules and claims topics itself (it does on Tansu); the
# behavior topic is the producers' and is created here.
tansu topic create vitrine.behavior --partitions 3 --broker "tcp://$BROKER" >/dev/null

say "three replicas"
KAFKA=(--kafka-brokers "$BROKER")
replica r0 50161 9961 R0 "${KAFKA[@]}" --kafka-group bench-r0
replica r1 50162 9962 R1 "${KAFKA[@]}" --kafka-group bench-r1
replica r2 50163 9963 R2 "${KAFKA[@]}" --kafka-group bench-r2
wait_ready r0 9961 "$R0"
wait_ready r1 9962 "$R1"
wait_ready r2 9963 "$R2"
tansu topic list --broker "tcp://$BROKER" | tr '{' '\n' | sed -n 's/.*"name":"\(vitrine[^"]*\)".*/topic \1/p'
REPLICAS=127.0.0.1:50161,127.0.0.1:50162,127.0.0.1:50163

say "push propagation: $LOADTEST cluster --replicas $REPLICAS push --pushes $PUSHES"
"$LOADTEST" cluster --replicas "$REPLICAS" push --pushes "$PUSHES"

say "offer propagation: $LOADTEST cluster --replicas $REPLICAS offers --samples $OFFERS"
"$LOADTEST" cluster --replicas "$REPLICAS" offers --samples "$OFFERS"

for rate in 100 1000; do
    say "claims through the claims topic at $rate/s: $LOADTEST cluster --replicas $REPLICAS claims --rate $rate --duration $CLAIM_DURATION"
    "$LOADTEST" cluster --replicas "$REPLICAS" claims --rate "$rate" --duration "$CLAIM_DURATION"
done

say "one embedded server (no --kafka-brokers: the local claims journal)"
replica embedded 50164 9964 EMB
wait_ready embedded 9964 "$EMB"
for rate in 100 1000; do
    say "claims on the local journal at $rate/s: $LOADTEST cluster --replicas 127.0.0.1:50164 claims --rate $rate --duration $CLAIM_DURATION"
    "$LOADTEST" cluster --replicas 127.0.0.1:50164 claims --rate "$rate" --duration "$CLAIM_DURATION"
done
say "closed loop on the local journal: $LOADTEST cluster --replicas 127.0.0.1:50164 claims-max --concurrency $CONCURRENCY --duration $MAX_DURATION"
"$LOADTEST" cluster --replicas 127.0.0.1:50164 claims-max --concurrency "$CONCURRENCY" --duration "$MAX_DURATION"
stop "$EMB"

say "one partition's claims/s: $LOADTEST cluster --replicas $REPLICAS claims-max --concurrency $CONCURRENCY --duration $MAX_DURATION"
"$LOADTEST" cluster --replicas "$REPLICAS" claims-max --concurrency "$CONCURRENCY" --duration "$MAX_DURATION"

for r in r0 r1 r2; do
    echo "$r: $(grep -c ' WARN' "$WORK/$r.log" || true) warnings, $(grep -c 'ERROR' "$WORK/$r.log" || true) errors in its log"
done

say "--shops memory: rules for bench-a, bench-b, bench-c through the rules topic"
for shop in bench-a bench-b bench-c; do
    printf 'shop: %s\n\naudiences:\n  buyer: purchased(30d)\n  browser: viewed(7d) and not purchased(30d)\n\nbanners:\n  - when: buyer\n    banner: thanks\n  - when: browser\n    banner: come-back\n  - banner: default\n' "$shop" >"$WORK/$shop.yaml"
    "$VITRINE" rules push "$WORK/$shop.yaml" --addr 127.0.0.1:50161 >/dev/null
done
# The three replicas are done: their CPU goes to the two measured ones.
stop "$R0"
stop "$R1"
stop "$R2"

TOTAL=$((EVENTS_PER_SHOP * 3))
say "producing $EVENTS_PER_SHOP events per shop ($TOTAL) to vitrine.behavior"
NOW_MS=$(($(date +%s) * 1000))
awk -v n="$EVENTS_PER_SHOP" -v v="$VISITORS_PER_SHOP" -v now="$NOW_MS" 'BEGIN {
    srand(42)
    split("bench-a bench-b bench-c", shops, " ")
    for (s = 1; s <= 3; s++) for (i = 0; i < n; i++) {
        visitor = int(rand() * v); item = int(rand() * 2000); ts = now - int(rand() * 30 * 86400000)
        r = rand()
        if (r < 0.7) action = "view"; else if (r < 0.9) action = "cart"; else action = "purchase"
        line = sprintf("{\"shop\":\"%s\",\"visitor\":\"v-%d\",\"action\":\"%s\",\"item\":\"sku-%d\",\"category\":\"c-%d\",\"ts\":%d",
                       shops[s], visitor, action, item, item % 20, ts)
        if (action == "purchase") line = line sprintf(",\"price\":%d.5,\"id\":\"o-%s-%d\"", 10 + item % 90, shops[s], i)
        print line "}"
    }
}' >"$WORK/events.jsonl"
start_s=$(date +%s.%N)
"$VITRINE" kafka produce --brokers "$BROKER" --topic vitrine.behavior "$WORK/events.jsonl" >/dev/null
echo "produced $TOTAL events in $(echo "$(date +%s.%N) - $start_s" | bc) s"
rm -f "$WORK/events.jsonl"

say "replicas reading the whole behavior topic: --shops bench-a vs all three (and none: the baseline)"
replica one 50165 9965 ONE "${KAFKA[@]}" --kafka-group bench-one --shops bench-a
replica all 50166 9966 ALL "${KAFKA[@]}" --kafka-group bench-all
replica none 50167 9967 NONE "${KAFKA[@]}" --kafka-group bench-none --shops no-such-shop
wait_ready one 9965 "$ONE"
wait_ready all 9966 "$ALL"
wait_ready none 9967 "$NONE"
# Ready means the index holds the behavior topic up to its high watermarks at
# start; the index gauges are refreshed every few --rules-poll ticks: wait
# for them too, so both processes are past their catch-up when RSS is read.
for r in "one 9965" "all 9966"; do
    set -- $r
    for ((i = 0; i < 600; i++)); do
        [[ $(metric_sum "$2" vitrine_index_visitors) -gt 0 ]] && break
        sleep 0.1
    done
done
ONE_KIB=$(rss_kib "$ONE")
ALL_KIB=$(rss_kib "$ALL")
NONE_KIB=$(rss_kib "$NONE")
for r in "one 9965" "all 9966" "none 9967"; do
    set -- $r
    echo "$1: events applied $(metric_sum "$2" vitrine_ingest_events_applied_total), skipped (other shops) $(metric_sum "$2" vitrine_ingest_skipped_total), visitors $(metric_sum "$2" vitrine_index_visitors), bitmap bytes $(metric_sum "$2" vitrine_index_bitmap_bytes)"
done
awk -v a="$ONE_KIB" -v b="$ALL_KIB" -v z="$NONE_KIB" 'BEGIN {
    printf "VmRSS --shops bench-a: %.1f MiB; all three shops: %.1f MiB; one/all = %.2f\n", a / 1024, b / 1024, a / b
    printf "VmRSS --shops no-such-shop (baseline: reads and skips everything): %.1f MiB\n", z / 1024
    if (b > z) printf "above the baseline: one shop %.1f MiB, three shops %.1f MiB; one/all = %.2f\n", (a - z) / 1024, (b - z) / 1024, (a - z) / (b - z)
}'
