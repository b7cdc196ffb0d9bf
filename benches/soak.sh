#!/usr/bin/env bash
# A soak run of the gateway (not a test): full load for SLICES x 10 s with a mix of cache
# hits, entries expiring and re-validated, and made-up tokens, through a CloudBase that
# fails for OUTAGE_SLICES x 10 s in the middle. Real processes on 127.0.0.1:
#
#   benches/soak.sh        # a line per 10 s slice, then the verdict (exit 1 if it fails)
#
# Two wrk processes run side by side in each slice (on LOAD_CPUS; every server on
# SERVER_CPUS):
#   users     HIT_CONNECTIONS connections rotating over USERS signed-in tokens; with
#             cache.ttl = 5s each entry expires and is validated again every 5 s, so the
#             stream mixes cache hits with CloudBase round trips. Expected: 200 (503 is
#             allowed only while CloudBase is down, for entries that expired meanwhile,
#             and in the first slice after it: the CloudBase breaker, open during the
#             outage, asks again after its cool-down of cloudbase.breaker_cooldown = 1s).
#   made-up   BAD_CONNECTIONS connections, a token never seen before on every request.
#             Expected: 401 (503 while CloudBase is down, and as above).
# Each slice prints the gateway's RSS, the status counts of both streams and the CloudBase
# calls (the emulator's counters). Verdict: no status other than the expected ones, and RSS
# after warm-up (the last third against the end of the first minute) within RSS_SLACK %.
#
# Settings (environment): SLICES=60 OUTAGE_AT=30 OUTAGE_SLICES=2 USERS=2000
# HIT_CONNECTIONS=48 BAD_CONNECTIONS=8 RSS_SLACK=10 SERVER_CPUS=1 LOAD_CPUS=0
# BASE_PORT=18100 KEEP=1 (keep the work directory).
set -euo pipefail

cd "$(dirname "$0")/.."
SLICES=${SLICES:-60}
OUTAGE_AT=${OUTAGE_AT:-30}
OUTAGE_SLICES=${OUTAGE_SLICES:-2}
USERS=${USERS:-2000}
HIT_CONNECTIONS=${HIT_CONNECTIONS:-48}
BAD_CONNECTIONS=${BAD_CONNECTIONS:-8}
RSS_SLACK=${RSS_SLACK:-10}
BASE_PORT=${BASE_PORT:-18100}
UPSTREAM_PORT=$((BASE_PORT + 1))
EMULATOR_PORT=$((BASE_PORT + 2))
GATEWAY_PORT=$((BASE_PORT + 3))
ADMIN_PORT=$((BASE_PORT + 4))
export RUST_LOG=${RUST_LOG:-warn}

WORK_NAME=cloudbase-gateway-soak
# shellcheck source=benches/lib.sh
. benches/lib.sh
install_missing "nginx nginx-light" "wrk wrk" "curl curl"
build_gateway
write_upstream_conf "$UPSTREAM_PORT"

cat >"$WORK/emulator.toml" <<EOF
[cloudbase]
env_id = "soak-env"
client_id = "soak-client"

[emulator]
listen = "127.0.0.1:$EMULATOR_PORT"
access_token_ttl = "2h"
test_hooks = true

[[emulator.users]]
username = "soak"
password = "soak-password"
name = "压测用户"
groups = ["user"]
EOF

cat >"$WORK/gateway.toml" <<EOF
[server]
listen = "127.0.0.1:$GATEWAY_PORT"

[admin]
listen = "127.0.0.1:$ADMIN_PORT"

[cloudbase]
env_id = "soak-env"
client_id = "soak-client"
base_url = "http://127.0.0.1:$EMULATOR_PORT/auth/v1"

[cache]
ttl = "5s"
negative_ttl = "5s"

[[routes]]
prefix = "/"
upstream = "http://127.0.0.1:$UPSTREAM_PORT"
auth = "required"
EOF
"$GATEWAY_BIN" check --config "$WORK/gateway.toml" >/dev/null

# Counts statuses per thread (response() runs in the thread's Lua state) and prints
# "STATUS <code> <count>" lines at the end (done() runs in the main one).
COUNT_LUA='
local threads = {}
function setup(thread) table.insert(threads, thread) end
function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end
function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("counts")) do io.write(string.format("STATUS %d %d\n", status, n)) end
  end
end
'
cat >"$WORK/users.lua" <<EOF
local requests, i = {}, 0
function init(args)
  counts = {}
  for token in io.lines(os.getenv("TOKENS_FILE")) do
    requests[#requests + 1] = wrk.format(nil, nil, { ["Authorization"] = "Bearer " .. token })
  end
end
function request()
  i = i % #requests + 1
  return requests[i]
end
$COUNT_LUA
EOF
cat >"$WORK/madeup.lua" <<EOF
local n, slice = 0, os.getenv("SLICE")
function init(args) counts = {} end
function request()
  n = n + 1
  return wrk.format(nil, nil, { ["Authorization"] = "Bearer made-up-" .. slice .. "-" .. n })
end
$COUNT_LUA
EOF

status_count() { # file status
    awk -v s="$2" '$1 == "STATUS" && $2 == s { n += $3 } END { print n + 0 }' "$1"
}
other_count() { # file allowed-statuses...
    local file=$1
    shift
    awk -v ok=" $* " '$1 == "STATUS" && index(ok, " " $2 " ") == 0 { n += $3 } END { print n + 0 }' "$file"
}

say "starting upstream, emulator and gateway on cpu $SERVER_CPUS; wrk on cpu $LOAD_CPUS"
start_nginx upstream "$UPSTREAM_PORT"
start_emulator "$WORK/emulator.toml"
taskset -c "$SERVER_CPUS" "$GATEWAY_BIN" --config "$WORK/gateway.toml" 2>"$WORK/gateway.log" &
GATEWAY_PID=$!
PIDS+=("$GATEWAY_PID")
wait_http "http://127.0.0.1:$ADMIN_PORT/readyz"

say "signing in $USERS sessions"
sign_in soak soak-password "$USERS" "$WORK/tokens.txt"
export TOKENS_FILE="$WORK/tokens.txt"

say "soaking: $SLICES slices of 10 s; CloudBase answers 500 in slices $OUTAGE_AT..$((OUTAGE_AT + OUTAGE_SLICES - 1))"
printf '%5s %6s %8s | %9s %7s %7s | %9s %7s %7s | %9s %9s %s\n' slice t rss_mib \
    users_200 503 other madeup_401 503 other introspect user_me note
UNEXPECTED=0
RSS=()
LAST_I=$(calls introspect)
LAST_U=$(calls user_me)
for slice in $(seq 1 "$SLICES"); do
    note=""
    down=0
    if [ "$slice" -ge "$OUTAGE_AT" ] && [ "$slice" -lt $((OUTAGE_AT + OUTAGE_SLICES)) ]; then
        down=1
        note="CloudBase down"
        [ "$slice" -eq "$OUTAGE_AT" ] && fault error500
    elif [ "$slice" -eq $((OUTAGE_AT + OUTAGE_SLICES)) ]; then
        note="CloudBase back (503 until the breaker's probe)"
    fi
    SLICE=$slice taskset -c "$LOAD_CPUS" wrk -t1 -c"$HIT_CONNECTIONS" -d10s -s "$WORK/users.lua" \
        "http://127.0.0.1:$GATEWAY_PORT/soak" >"$WORK/users-$slice.txt" &
    users_pid=$!
    SLICE=$slice taskset -c "$LOAD_CPUS" wrk -t1 -c"$BAD_CONNECTIONS" -d10s -s "$WORK/madeup.lua" \
        "http://127.0.0.1:$GATEWAY_PORT/soak" >"$WORK/madeup-$slice.txt"
    wait "$users_pid"
    [ "$down" -eq 1 ] && [ "$slice" -eq $((OUTAGE_AT + OUTAGE_SLICES - 1)) ] && fault ok
    if [ "$down" -eq 1 ] || [ "$slice" -eq $((OUTAGE_AT + OUTAGE_SLICES)) ]; then
        users_other=$(other_count "$WORK/users-$slice.txt" 200 503)
        bad_other=$(other_count "$WORK/madeup-$slice.txt" 401 503)
    else
        users_other=$(other_count "$WORK/users-$slice.txt" 200)
        bad_other=$(other_count "$WORK/madeup-$slice.txt" 401)
    fi
    UNEXPECTED=$((UNEXPECTED + users_other + bad_other))
    rss_kib=$(awk '/^VmRSS:/ { print $2 }' "/proc/$GATEWAY_PID/status")
    RSS+=("$rss_kib")
    now_i=$(calls introspect)
    now_u=$(calls user_me)
    printf '%5d %5ds %8.1f | %9d %7d %7d | %9d %7d %7d | %9d %9d %s\n' "$slice" $((slice * 10)) \
        "$(awk -v k="$rss_kib" 'BEGIN { print k / 1024 }')" \
        "$(status_count "$WORK/users-$slice.txt" 200)" "$(status_count "$WORK/users-$slice.txt" 503)" "$users_other" \
        "$(status_count "$WORK/madeup-$slice.txt" 401)" "$(status_count "$WORK/madeup-$slice.txt" 503)" "$bad_other" \
        $((now_i - LAST_I)) $((now_u - LAST_U)) "$note"
    LAST_I=$now_i
    LAST_U=$now_u
done

warm=${RSS[$((SLICES < 6 ? SLICES - 1 : 5))]}
peak_late=0
for ((k = SLICES * 2 / 3; k < SLICES; k++)); do
    [ "${RSS[$k]}" -gt "$peak_late" ] && peak_late=${RSS[$k]}
done
growth=$(awk -v a="$peak_late" -v b="$warm" 'BEGIN { printf "%.1f", (a - b) * 100 / b }')
echo
echo "unexpected responses: $UNEXPECTED"
echo "RSS: $((warm / 1024)) MiB after warm-up, peak $((peak_late / 1024)) MiB in the last third ($growth %, allowed $RSS_SLACK %)"
ok=1
[ "$UNEXPECTED" -eq 0 ] || ok=0
awk -v g="$growth" -v s="$RSS_SLACK" 'BEGIN { exit !(g <= s) }' || ok=0
if [ "$ok" -eq 1 ]; then echo "verdict: ok"; else echo "verdict: FAILED"; exit 1; fi
