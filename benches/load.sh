#!/usr/bin/env bash
# End-to-end load test of the gateway with real processes on 127.0.0.1.
#
#   benches/load.sh        # the table on stdout, progress on stderr
#
# About a minute after the release build (which takes 2-3 minutes on a fresh machine).
# Builds the binary and examples/bench_upstream.rs, installs wrk and curl with apt-get if
# missing, then measures with wrk (one thread, 32 connections, 10 s, --latency):
#   (a) the upstream alone;
#   (b) the gateway, route auth = "none";
#   (c) the gateway, route auth = "required", every token cached: TOKENS users' tokens
#       (signed in at the embedded emulator), each warmed by one request, rotating;
#   (d) cold start: a restarted gateway (empty cache) and COLD_TOKENS fresh tokens, each
#       sent once; checks that the emulator saw exactly COLD_TOKENS introspect and
#       COLD_TOKENS user/me calls (GET /__emulator/stats).
# then the cache's memory per entry (examples/cache_memory.rs, 1 000 000 identities).
# (a), (b) and (c) run ROUNDS times, interleaved, and the table shows their means (other work
# on the machine then weighs on all three alike). Prints a table with requests/s, p50 and
# p99, and the ratios (c)/(b) and (b),(c)/(a).
#
# Servers (gateway with its embedded emulator, upstream) run on SERVER_CPUS and wrk on
# LOAD_CPUS, pinned with taskset; with one core both share it. The gateway logs at
# RUST_LOG (default info: one access log line per request, as in production) to a file.
#
# Settings (environment): DURATION=10s ROUNDS=2 CONNECTIONS=32 TOKENS=300 COLD_TOKENS=2000
# SERVER_CPUS=1 LOAD_CPUS=0 BASE_PORT=18000 SKIP_MEMORY=1 (skip the memory run)
# KEEP=1 (keep the work directory with configs, tokens and logs).
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-2}
CONNECTIONS=${CONNECTIONS:-32}
TOKENS=${TOKENS:-300}
COLD_TOKENS=${COLD_TOKENS:-2000}
BASE_PORT=${BASE_PORT:-18000}
UPSTREAM_PORT=$((BASE_PORT + 1))
GATEWAY_PORT=$((BASE_PORT + 2))
ADMIN_PORT=$((BASE_PORT + 3))
EMULATOR_PORT=$((BASE_PORT + 4))
export RUST_LOG=${RUST_LOG:-info}

CORES=$(nproc)
if [ "$CORES" -ge 2 ]; then
    SERVER_CPUS=${SERVER_CPUS:-1}
    LOAD_CPUS=${LOAD_CPUS:-0}
else
    SERVER_CPUS=${SERVER_CPUS:-0}
    LOAD_CPUS=${LOAD_CPUS:-0}
    echo "note: one core; wrk and the servers share it" >&2
fi

WORK=$(mktemp -d /tmp/cloudbase-gateway-load.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [ "${KEEP:-0}" = 1 ]; then
        echo "kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

say() { printf '\n== %s\n' "$*" >&2; }

say "building (release)"
cargo build --release --quiet --bin cloudbase-gateway --example bench_upstream --example cache_memory
GATEWAY_BIN=$PWD/target/release/cloudbase-gateway
UPSTREAM_BIN=$PWD/target/release/examples/bench_upstream
MEMORY_BIN=$PWD/target/release/examples/cache_memory

for tool in wrk curl; do
    if ! command -v "$tool" >/dev/null; then
        say "installing $tool"
        apt-get install -y "$tool" >/dev/null 2>&1 ||
            { apt-get update >/dev/null && apt-get install -y "$tool" >/dev/null; }
    fi
done

cat >"$WORK/gateway.toml" <<EOF
[server]
listen = "127.0.0.1:$GATEWAY_PORT"

[admin]
listen = "127.0.0.1:$ADMIN_PORT"

[cloudbase]
env_id = "bench-env"
client_id = "bench-client"

[cache]
max_entries = 1000000
ttl = "10m"

[[routes]]
prefix = "/none/"
upstream = "http://127.0.0.1:$UPSTREAM_PORT"
auth = "none"

[[routes]]
prefix = "/auth/"
upstream = "http://127.0.0.1:$UPSTREAM_PORT"
auth = "required"

[emulator]
enabled = true
listen = "127.0.0.1:$EMULATOR_PORT"
access_token_ttl = "2h"
test_hooks = true                  # the call counts below come from /__emulator/stats

[[emulator.users]]
username = "bench"
password = "bench-password"
name = "压测用户"
email = "bench@example.com"
groups = ["user"]
EOF
"$GATEWAY_BIN" check --config "$WORK/gateway.toml" >/dev/null

# Rotates Authorization over $TOKENS_FILE, one request prepared per token.
cat >"$WORK/rotate.lua" <<'EOF'
local requests, i = {}, 0
function init(args)
  for token in io.lines(os.getenv("TOKENS_FILE")) do
    requests[#requests + 1] = wrk.format(nil, nil, { ["Authorization"] = "Bearer " .. token })
  end
end
function request()
  i = i % #requests + 1
  return requests[i]
end
EOF

# Sends each token of $TOKENS_FILE once, stops after as many responses, and prints
# "COLD <responses> <non-200> <nanoseconds>" (wrk's own rate counts its whole -d).
cat >"$WORK/walk.lua" <<'EOF'
local requests, i, done, bad, started = {}, 0, 0, 0, nil
local function now_ns()
  local p = io.popen("date +%s%N"); local t = p:read("*n"); p:close(); return t
end
function init(args)
  for token in io.lines(os.getenv("TOKENS_FILE")) do
    requests[#requests + 1] = wrk.format(nil, nil, { ["Authorization"] = "Bearer " .. token })
  end
end
function request()
  if not started then started = now_ns() end
  i = i % #requests + 1
  return requests[i]
end
function response(status, headers, body)
  done = done + 1
  if status ~= 200 then bad = bad + 1 end
  if done == #requests then
    io.write(string.format("COLD %d %d %d\n", done, bad, now_ns() - started))
    wrk.thread:stop()
    -- Ends wrk's sleep through -d; system() blocks SIGINT, hence the background kill.
    os.execute("(sleep 0.01; kill -INT $PPID) >/dev/null 2>&1 &")
  end
end
EOF

wait_http() { # url
    for _ in $(seq 1 100); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "no answer from $1" >&2
    exit 1
}

start_gateway() {
    taskset -c "$SERVER_CPUS" "$GATEWAY_BIN" --config "$WORK/gateway.toml" 2>>"$WORK/gateway.log" &
    GATEWAY_PID=$!
    PIDS+=("$GATEWAY_PID")
    wait_http "http://127.0.0.1:$ADMIN_PORT/readyz"
    wait_http "http://127.0.0.1:$EMULATOR_PORT/healthz"
}

stop_gateway() {
    kill -TERM "$GATEWAY_PID"
    wait "$GATEWAY_PID" || true
}

# Signs in user "bench" $1 times (one session, so one token, each) into file $2.
sign_in() {
    local n=$1 out=$2 cfg="$WORK/signin.curl"
    : >"$cfg"
    for k in $(seq 1 "$n"); do
        [ "$k" -eq 1 ] || echo next >>"$cfg"
        printf 'url = "http://127.0.0.1:%s/auth/v1/signin"\nheader = "Content-Type: application/json"\ndata = "{\\"username\\":\\"bench\\",\\"password\\":\\"bench-password\\"}"\nwrite-out = "\\n"\n' \
            "$EMULATOR_PORT" >>"$cfg"
    done
    curl -sS -K "$cfg" | grep -o '"access_token":"[^"]*"' | cut -d'"' -f4 >"$out"
    local got
    got=$(wc -l <"$out")
    [ "$got" -eq "$n" ] || { echo "signed in $got of $n" >&2; exit 1; }
    [ "$(sort -u "$out" | wc -l)" -eq "$n" ] || { echo "tokens are not distinct" >&2; exit 1; }
}

# One request per token of file $1 to the auth route; every answer must be 200.
warm() {
    local cfg="$WORK/warm.curl"
    : >"$cfg"
    while read -r token; do
        [ ! -s "$cfg" ] || echo next >>"$cfg"
        printf 'url = "http://127.0.0.1:%s/auth/warm"\nheader = "Authorization: Bearer %s"\noutput = "/dev/null"\nwrite-out = "%%{http_code}\\n"\n' \
            "$GATEWAY_PORT" "$token" >>"$cfg"
    done <"$1"
    local not_ok
    not_ok=$(curl -sS -K "$cfg" | grep -cv '^200$' || true)
    [ "$not_ok" -eq 0 ] || { echo "$not_ok warm-up requests were not 200" >&2; exit 1; }
}

# The emulator's call counter $1 (introspect, user_me, signin…).
calls() {
    curl -fsS "http://127.0.0.1:$EMULATOR_PORT/__emulator/stats" |
        grep -o "\"$1\":[0-9]*" | cut -d: -f2
}

# wrk latency ("412.00us", "1.02ms", "1.5s") -> microseconds.
to_us() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) u = n; else if (v ~ /ms$/) u = n * 1000; else if (v ~ /s$/) u = n * 1000000; else u = n
        printf "%.0f", u }'
}

# Runs wrk with script $2 against URL $1; sets RPS, P50, P99 (µs). Extra wrk args after.
# Per scenario, in first-run order: summed requests/s, p50, p99 and the number of runs.
ORDER=()
declare -A SUM_RPS SUM_P50 SUM_P99 RUNS
measure() {
    local name=$1 url=$2 script=$3
    shift 3
    local out="$WORK/wrk-${name%% *}.txt"
    taskset -c "$LOAD_CPUS" wrk -t1 -c"$CONNECTIONS" --latency -s "$script" "$@" "$url" >"$out"
    if grep -q "Non-2xx" "$out"; then
        echo "$name: $(grep 'Non-2xx' "$out")" >&2
        cat "$out" >&2
        exit 1
    fi
    local p50 p99 rps
    p50=$(to_us "$(awk '$1 == "50%" { print $2 }' "$out")")
    p99=$(to_us "$(awk '$1 == "99%" { print $2 }' "$out")")
    rps=$(awk '$1 == "Requests/sec:" { printf "%.0f", $2 }' "$out")
    if grep -q '^COLD ' "$out"; then
        rps=$(awk '$1 == "COLD" { printf "%.0f", $2 / ($4 / 1e9) }' "$out")
    fi
    if [ -z "${RUNS[$name]:-}" ]; then
        ORDER+=("$name")
        RUNS[$name]=0 SUM_RPS[$name]=0 SUM_P50[$name]=0 SUM_P99[$name]=0
    fi
    RUNS[$name]=$((RUNS[$name] + 1))
    SUM_RPS[$name]=$((SUM_RPS[$name] + rps))
    SUM_P50[$name]=$((SUM_P50[$name] + p50))
    SUM_P99[$name]=$((SUM_P99[$name] + p99))
    printf '%-44s %9s req/s  p50 %6s us  p99 %6s us\n' "$name" "$rps" "$p50" "$p99" >&2
}

say "starting upstream (cpu $SERVER_CPUS) and gateway with embedded emulator (cpu $SERVER_CPUS); wrk on cpu $LOAD_CPUS"
taskset -c "$SERVER_CPUS" "$UPSTREAM_BIN" "$UPSTREAM_PORT" 2>"$WORK/upstream.log" &
PIDS+=("$!")
wait_http "http://127.0.0.1:$UPSTREAM_PORT/"
start_gateway

say "signing in $TOKENS sessions, warming each token with one request"
sign_in "$TOKENS" "$WORK/tokens.txt"
warm "$WORK/tokens.txt"
[ "$(calls introspect)" -eq "$TOKENS" ] && [ "$(calls user_me)" -eq "$TOKENS" ] ||
    { echo "warm-up: expected $TOKENS introspect/user_me calls" >&2; exit 1; }

export TOKENS_FILE="$WORK/tokens.txt"
say "measuring ($DURATION each)"
A="(a) upstream direct"
B="(b) gateway, auth = none"
C="(c) gateway, auth = required, cached"
for _ in $(seq 1 "$ROUNDS"); do
    measure "$A" "http://127.0.0.1:$UPSTREAM_PORT/auth/x" "$WORK/rotate.lua" -d "$DURATION"
    measure "$B" "http://127.0.0.1:$GATEWAY_PORT/none/x" "$WORK/rotate.lua" -d "$DURATION"
    measure "$C" "http://127.0.0.1:$GATEWAY_PORT/auth/x" "$WORK/rotate.lua" -d "$DURATION"
done
HOT_INTROSPECT=$(calls introspect)
HOT_USER_ME=$(calls user_me)
[ "$HOT_INTROSPECT" -eq "$TOKENS" ] && [ "$HOT_USER_ME" -eq "$TOKENS" ] ||
    { echo "(c) called CloudBase: introspect $HOT_INTROSPECT, user_me $HOT_USER_ME" >&2; exit 1; }

say "cold start: restarting the gateway, $COLD_TOKENS fresh tokens, each sent once"
stop_gateway
start_gateway
sign_in "$COLD_TOKENS" "$WORK/cold-tokens.txt"
BEFORE_I=$(calls introspect)
BEFORE_U=$(calls user_me)
D="(d) gateway, auth = required, cold"
TOKENS_FILE="$WORK/cold-tokens.txt" measure "$D" \
    "http://127.0.0.1:$GATEWAY_PORT/auth/x" "$WORK/walk.lua" -d 60s
COLD_I=$(($(calls introspect) - BEFORE_I))
COLD_U=$(($(calls user_me) - BEFORE_U))
if [ "$COLD_I" -eq "$COLD_TOKENS" ] && [ "$COLD_U" -eq "$COLD_TOKENS" ]; then
    COLD_VERDICT="ok"
else
    COLD_VERDICT="MISMATCH"
fi
stop_gateway

MEMORY_LINE="skipped (SKIP_MEMORY=1)"
if [ "${SKIP_MEMORY:-0}" != 1 ]; then
    say "cache memory: 1 000 000 identities (examples/cache_memory.rs)"
    "$MEMORY_BIN" 1000000 | tee "$WORK/memory.txt" >&2 || true
    MEMORY_LINE="$(awk '/bytes per entry/ { print $4 }' "$WORK/memory.txt") bytes per cached identity (target <= 1024)"
fi

mean() { # sums array name, scenario
    local -n sums=$1
    echo $(( ${sums[$2]} / ${RUNS[$2]} ))
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

echo
echo "cloudbase-gateway load test: $CORES cores ($(lscpu | awk -F: '/Model name/ { gsub(/^ +/, "", $2); print $2 }')); servers on cpu $SERVER_CPUS, wrk on cpu $LOAD_CPUS"
echo "wrk -t1 -c$CONNECTIONS -d$DURATION --latency; (a)-(c): mean of $ROUNDS interleaved runs, $TOKENS rotating tokens; (d): $COLD_TOKENS new tokens once each; RUST_LOG=$RUST_LOG"
echo
printf '| %-40s | %10s | %9s | %9s |\n' "scenario" "requests/s" "p50 (us)" "p99 (us)"
printf '|%s|%s|%s|%s|\n' "------------------------------------------" "------------" "-----------" "-----------"
for name in "${ORDER[@]}"; do
    printf '| %-40s | %10s | %9s | %9s |\n' "$name" "$(mean SUM_RPS "$name")" \
        "$(mean SUM_P50 "$name")" "$(mean SUM_P99 "$name")"
done
echo
echo "(c)/(b) throughput: $(ratio "$(mean SUM_RPS "$C")" "$(mean SUM_RPS "$B")")   (target >= 0.90)"
echo "(c)/(b) p99:        $(ratio "$(mean SUM_P99 "$C")" "$(mean SUM_P99 "$B")")   (target <= 1.20)"
echo "(b)/(a) throughput: $(ratio "$(mean SUM_RPS "$B")" "$(mean SUM_RPS "$A")")"
echo "(c)/(a) throughput: $(ratio "$(mean SUM_RPS "$C")" "$(mean SUM_RPS "$A")")"
echo "(d) $COLD_TOKENS new tokens -> introspect $COLD_I, user_me $COLD_U: $COLD_VERDICT"
echo "memory: $MEMORY_LINE"
[ "$COLD_VERDICT" = ok ]
