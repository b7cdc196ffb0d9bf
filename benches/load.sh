#!/usr/bin/env bash
# The gateway side by side with what people run instead, in one run, real processes on
# 127.0.0.1:
#
#   benches/load.sh        # the tables on stdout, progress on stderr
#
# Targets, each behind the same upstream (its own one-worker nginx answering "ok"):
#   upstream direct                      the upstream alone (the ceiling)
#   nginx plain proxy                    nginx, proxy_pass with upstream keep-alive
#   bare hyper proxy                     examples/bare_proxy.rs: hyper + hyper-util's pooled
#                                        client and nothing else, the floor for any proxy
#                                        built on them (calibration, not a competitor)
#   nginx + Lua cached introspection     what lua-resty-openidc does: a shared-dict cache
#                                        keyed by a digest of the token; on a miss,
#                                        /token/introspect + /user/me subrequests to the
#                                        same CloudBase stand-in; the same identity headers
#   gateway auth = "none"                the gateway as a plain proxy
#   gateway auth = "required"            every request a cache hit
#   nginx auth_request + forward-auth    nginx in front, asking the gateway's forward-auth
#                                        endpoint per request (deploy/nginx/*.conf as shipped),
#                                        every decision a cache hit
# then the same over HTTP/2 (h2c, prior knowledge) with h2load: nginx's h2c proxy against
# the gateway's h2c listener. Finally a cold check: a restarted gateway, COLD_TOKENS new
# tokens sent CONCURRENCY at a time, must cost exactly one introspect and one /user/me per
# token (the emulator's call counters).
#
# Every server (upstream, CloudBase stand-in, nginx, gateway) is pinned to SERVER_CPUS,
# wrk/h2load to LOAD_CPUS (taskset). Access logs are off everywhere (RUST_LOG=warn for the
# gateway, access_log off for nginx). Each HTTP/1.1 target runs ROUNDS times, interleaved,
# and the table shows means, so other work on the machine weighs on all alike.
#
# Installs what is missing with apt-get (nginx-light, libnginx-mod-http-lua, lua-cjson,
# wrk, nghttp2-client, curl); builds the release binary. About 3 minutes after the build.
#
# Settings (environment): DURATION=10s ROUNDS=2 CONNECTIONS=64 TOKENS=200
# H2_CONNECTIONS=8 H2_STREAMS=32 H2_REQUESTS=200000 COLD_TOKENS=2000 SERVER_CPUS=1
# LOAD_CPUS=0 BASE_PORT=18000 KEEP=1 (keep the work directory: configs, tokens, logs)
# ONLY="regex" (run only the HTTP/1.1 targets whose name matches).
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-2}
CONNECTIONS=${CONNECTIONS:-64}
TOKENS=${TOKENS:-200}
H2_CONNECTIONS=${H2_CONNECTIONS:-8}
H2_STREAMS=${H2_STREAMS:-32}
H2_REQUESTS=${H2_REQUESTS:-200000}
COLD_TOKENS=${COLD_TOKENS:-2000}
ONLY=${ONLY:-.}
BASE_PORT=${BASE_PORT:-18000}
UPSTREAM_PORT=$((BASE_PORT + 1))
EMULATOR_PORT=$((BASE_PORT + 2))
GATEWAY_PORT=$((BASE_PORT + 3))
ADMIN_PORT=$((BASE_PORT + 4))
NGINX_PORT=$((BASE_PORT + 5))
LUA_PORT=$((BASE_PORT + 6))
NGINX_H2_PORT=$((BASE_PORT + 7))
BARE_PORT=$((BASE_PORT + 8))
FWD_PORT=$((BASE_PORT + 9))
export RUST_LOG=${RUST_LOG:-warn}

WORK_NAME=cloudbase-gateway-load
# shellcheck source=benches/lib.sh
. benches/lib.sh
install_missing "nginx nginx-light" "$NGINX_MODULES/ngx_http_lua_module.so libnginx-mod-http-lua" \
    "/usr/lib/*/lua/5.1/cjson.so lua-cjson" "wrk wrk" "h2load nghttp2-client" "curl curl"
build_gateway
cargo build --release --quiet --example bare_proxy
BARE_BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/examples/bare_proxy

# ---------------------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------------------

write_upstream_conf "$UPSTREAM_PORT"

# nginx as a plain reverse proxy: what an operator would write (HTTP/1.1 keep-alive to the
# upstream), on HTTP/1.1 and on an h2c (prior knowledge) port.
{
    nginx_head proxy
    cat <<EOF
http {
    access_log off;
$(temp_paths proxy)
    keepalive_requests 1000000;
    http2_max_concurrent_streams 256;
    upstream app { server 127.0.0.1:$UPSTREAM_PORT; keepalive 256; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$NGINX_PORT backlog=4096;
        listen 127.0.0.1:$NGINX_H2_PORT http2;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
    }
}
EOF
} >"$WORK/nginx/proxy.conf"

# nginx + Lua doing cached introspection, as lua-resty-openidc's introspection mode does:
# the token's SHA-1 digest keys a shared dict; a miss makes the two CloudBase calls as
# subrequests (concurrently), a hit sets the identity headers from the cached JSON.
{
    nginx_head lua ndk_http_module.so ngx_http_lua_module.so
    cat <<EOF
http {
    access_log off;
$(temp_paths lua)
    keepalive_requests 1000000;
    lua_package_cpath "/usr/lib/x86_64-linux-gnu/lua/5.1/?.so;/usr/lib/lua/5.1/?.so;;";
    lua_shared_dict identities 64m;
    upstream app { server 127.0.0.1:$UPSTREAM_PORT; keepalive 256; keepalive_requests 1000000; }
    upstream cloudbase { server 127.0.0.1:$EMULATOR_PORT; keepalive 64; }
    server {
        listen 127.0.0.1:$LUA_PORT backlog=4096;
        location = /_introspect {
            internal;
            proxy_pass http://cloudbase/auth/v1/token/introspect;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization \$http_authorization;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }
        location = /_user_me {
            internal;
            proxy_pass http://cloudbase/auth/v1/user/me;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization \$http_authorization;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }
        location / {
            access_by_lua_block {
                local cjson = require "cjson.safe"
                local names = { "X-User-Id", "X-User-Name", "X-User-Username", "X-User-Email",
                                "X-User-Phone", "X-User-Groups", "X-User-Scope", "X-User-Anonymous" }
                for _, n in ipairs(names) do ngx.req.clear_header(n) end
                local auth = ngx.var.http_authorization
                local token = auth and auth:match("^[Bb]earer%s+(%S+)$")
                if not token then
                    ngx.header["WWW-Authenticate"] = 'Bearer realm="cloudbase-gateway"'
                    return ngx.exit(401)
                end
                local cache = ngx.shared.identities
                local key = ngx.sha1_bin(token)
                local cached = cache:get(key)
                if cached == "-" then return ngx.exit(401) end
                local id
                if cached then
                    id = cjson.decode(cached)
                else
                    local i, u = ngx.location.capture_multi({ { "/_introspect" }, { "/_user_me" } })
                    if i.status >= 500 or u.status >= 500 then return ngx.exit(503) end
                    local intro = cjson.decode(i.body) or {}
                    if u.status == 401 or not intro.sub then
                        cache:set(key, "-", 5)
                        return ngx.exit(401)
                    end
                    local p = cjson.decode(u.body) or {}
                    local groups = {}
                    for _, g in ipairs(p.groups or {}) do
                        groups[#groups + 1] = type(g) == "table" and g.id or g
                    end
                    local scope = intro.scope or ""
                    id = { intro.sub, p.name, p.username, p.email, p.phone_number,
                           table.concat(groups, ","), scope,
                           scope:find("anonymous", 1, true) and "true" or "false" }
                    for k = 1, #names do
                        if type(id[k]) == "string" then id[k] = ngx.escape_uri(id[k]) else id[k] = nil end
                    end
                    cache:set(key, cjson.encode(id), 600)  -- the gateway's cache.ttl (10m)
                end
                for k, n in ipairs(names) do
                    if id[k] and id[k] ~= cjson.null then ngx.req.set_header(n, id[k]) end
                end
            }
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
    }
}
EOF
} >"$WORK/nginx/lua.conf"

# nginx in front with auth_request to the gateway's forward-auth endpoint: the shipped
# snippets (deploy/nginx), as an operator who keeps nginx would include them.
{
    nginx_head fwd
    cat <<EOF
http {
    access_log off;
$(temp_paths fwd)
    keepalive_requests 1000000;
    upstream app { server 127.0.0.1:$UPSTREAM_PORT; keepalive 256; keepalive_requests 1000000; }
    upstream cloudbase-gateway { server 127.0.0.1:$GATEWAY_PORT; keepalive 256; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$FWD_PORT backlog=4096;
        include $PWD/deploy/nginx/cloudbase-gateway-server.conf;
        location / {
            include $PWD/deploy/nginx/cloudbase-gateway-location.conf;
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$remote_addr;
        }
    }
}
EOF
} >"$WORK/nginx/fwd.conf"

cat >"$WORK/emulator.toml" <<EOF
[cloudbase]
env_id = "bench-env"
client_id = "bench-client"

[emulator]
listen = "127.0.0.1:$EMULATOR_PORT"
access_token_ttl = "2h"
test_hooks = true

[[emulator.users]]
username = "bench"
password = "bench-password"
name = "压测用户"
email = "bench@example.com"
groups = ["user"]
EOF

cat >"$WORK/gateway.toml" <<EOF
[server]
listen = "127.0.0.1:$GATEWAY_PORT"

[admin]
listen = "127.0.0.1:$ADMIN_PORT"

[cloudbase]
env_id = "bench-env"
client_id = "bench-client"
base_url = "http://127.0.0.1:$EMULATOR_PORT/auth/v1"

[cache]
max_entries = 1000000
ttl = "10m"

# For the nginx auth_request row; the other rows never take its path.
[forward_auth]
enabled = true
path = "/_gateway/auth"
default_auth = "required"

[[routes]]
prefix = "/none/"
upstream = "http://127.0.0.1:$UPSTREAM_PORT"
auth = "none"

[[routes]]
prefix = "/auth/"
upstream = "http://127.0.0.1:$UPSTREAM_PORT"
auth = "required"
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

# ---------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------

start_gateway() {
    taskset -c "$SERVER_CPUS" "$GATEWAY_BIN" --config "$WORK/gateway.toml" 2>>"$WORK/gateway.log" &
    GATEWAY_PID=$!
    PIDS+=("$GATEWAY_PID")
    wait_http "http://127.0.0.1:$ADMIN_PORT/readyz"
}

stop_gateway() {
    kill -TERM "$GATEWAY_PID"
    wait "$GATEWAY_PID" || true
}

# One request per token of file $1 to URL $2; every answer must be 200.
warm() {
    local cfg="$WORK/warm.curl"
    : >"$cfg"
    while read -r token; do
        [ ! -s "$cfg" ] || echo next >>"$cfg"
        printf 'url = "%s"\nheader = "Authorization: Bearer %s"\noutput = "/dev/null"\nwrite-out = "%%{http_code}\\n"\n' \
            "$2" "$token" >>"$cfg"
    done <"$1"
    local not_ok
    not_ok=$(curl -sS -K "$cfg" | grep -cv '^200$' || true)
    [ "$not_ok" -eq 0 ] || { echo "$not_ok warm-up requests to $2 were not 200" >&2; exit 1; }
}

ORDER=()
declare -A SUM_RPS SUM_P50 SUM_P99 RUNS
record() { # name rps p50 p99
    local name=$1
    if [ -z "${RUNS[$name]:-}" ]; then
        ORDER+=("$name")
        RUNS[$name]=0 SUM_RPS[$name]=0 SUM_P50[$name]=0 SUM_P99[$name]=0
    fi
    RUNS[$name]=$((RUNS[$name] + 1))
    SUM_RPS[$name]=$((SUM_RPS[$name] + $2))
    SUM_P50[$name]=$((SUM_P50[$name] + $3))
    SUM_P99[$name]=$((SUM_P99[$name] + $4))
    printf '%-40s %9s req/s  p50 %6s us  p99 %6s us\n' "$name" "$2" "$3" "$4" >&2
}

# wrk against URL $2 under the name $1, tokens rotating; every answer must be 2xx.
measure() {
    local name=$1 url=$2 out
    out="$WORK/wrk-$(echo "$name" | tr -c 'a-z0-9' '-').txt"
    TOKENS_FILE="$WORK/tokens.txt" taskset -c "$LOAD_CPUS" \
        wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -s "$WORK/rotate.lua" "$url" >"$out"
    if grep -qE "Non-2xx|Socket errors" "$out"; then
        echo "$name: errors" >&2
        cat "$out" >&2
        exit 1
    fi
    record "$name" "$(awk '$1 == "Requests/sec:" { printf "%.0f", $2 }' "$out")" \
        "$(to_us "$(awk '$1 == "50%" { print $2 }' "$out")")" \
        "$(to_us "$(awk '$1 == "99%" { print $2 }' "$out")")"
}

# h2load (h2c, prior knowledge) against URL $2 under the name $1, one token.
measure_h2() {
    local name=$1 url=$2 out
    out="$WORK/h2load-$(echo "$name" | tr -c 'a-z0-9' '-').txt"
    taskset -c "$LOAD_CPUS" h2load -n"$H2_REQUESTS" -c"$H2_CONNECTIONS" -m"$H2_STREAMS" \
        -H "Authorization: Bearer $(head -1 "$WORK/tokens.txt")" "$url" >"$out"
    local ok
    ok=$(awk '/^status codes:/ { gsub(",", "", $3); print $3 }' "$out")
    if [ "$ok" != "$H2_REQUESTS" ]; then
        echo "$name: $ok of $H2_REQUESTS were 2xx" >&2
        cat "$out" >&2
        exit 1
    fi
    # "time for request:  min  max  mean  sd  +/- sd": h2load reports no percentiles; the
    # p50 column shows the mean and the p99 column the max.
    local mean max
    mean=$(to_us "$(awk '/^time for request:/ { print $6 }' "$out")")
    max=$(to_us "$(awk '/^time for request:/ { print $5 }' "$out")")
    record "$name" "$(awk '/^finished in/ { gsub(",", "", $4); printf "%.0f", $4 }' "$out")" "$mean" "$max"
}

say "starting upstream, CloudBase stand-in (emulator), nginx x2 and the gateway on cpu $SERVER_CPUS; load on cpu $LOAD_CPUS"
start_nginx upstream "$UPSTREAM_PORT"
start_emulator "$WORK/emulator.toml"
start_nginx proxy "$NGINX_PORT"
start_nginx lua "$LUA_PORT"
start_nginx fwd "$FWD_PORT"
taskset -c "$SERVER_CPUS" "$BARE_BIN" "127.0.0.1:$BARE_PORT" "127.0.0.1:$UPSTREAM_PORT" &
PIDS+=("$!")
wait_http "http://127.0.0.1:$BARE_PORT/"
start_gateway

say "signing in $TOKENS sessions; warming the gateway's and nginx + Lua's caches"
sign_in bench bench-password "$TOKENS" "$WORK/tokens.txt"
warm "$WORK/tokens.txt" "http://127.0.0.1:$GATEWAY_PORT/auth/warm"
warm "$WORK/tokens.txt" "http://127.0.0.1:$LUA_PORT/warm"
WARM_I=$(calls introspect)
WARM_U=$(calls user_me)
[ "$WARM_I" -eq $((2 * TOKENS)) ] && [ "$WARM_U" -eq $((2 * TOKENS)) ] ||
    { echo "warm-up: expected $((2 * TOKENS)) introspect/user_me calls, saw $WARM_I/$WARM_U" >&2; exit 1; }

UP="upstream direct"
NG="nginx plain proxy"
LUA="nginx + Lua cached introspection"
NONE="gateway auth = none"
HIT="gateway auth = required, cache hits"
BARE="bare hyper proxy (calibration)"
FWD="nginx auth_request + gateway fwd-auth"
say "HTTP/1.1: wrk -t1 -c$CONNECTIONS -d$DURATION, $ROUNDS interleaved rounds"
for _ in $(seq 1 "$ROUNDS"); do
    for pair in "$UP|http://127.0.0.1:$UPSTREAM_PORT/auth/x" \
        "$NG|http://127.0.0.1:$NGINX_PORT/auth/x" \
        "$BARE|http://127.0.0.1:$BARE_PORT/auth/x" \
        "$LUA|http://127.0.0.1:$LUA_PORT/auth/x" \
        "$NONE|http://127.0.0.1:$GATEWAY_PORT/none/x" \
        "$HIT|http://127.0.0.1:$GATEWAY_PORT/auth/x" \
        "$FWD|http://127.0.0.1:$FWD_PORT/auth/x"; do
        name=${pair%%|*}
        [[ $name =~ $ONLY ]] || continue
        measure "$name" "${pair#*|}"
    done
done
[ "$(calls introspect)" -eq "$WARM_I" ] && [ "$(calls user_me)" -eq "$WARM_U" ] ||
    { echo "cache-hit runs called CloudBase" >&2; exit 1; }

H2NG="h2c: nginx plain proxy"
H2NONE="h2c: gateway auth = none"
H2HIT="h2c: gateway auth = required, hits"
say "HTTP/2 (h2c): h2load -n$H2_REQUESTS -c$H2_CONNECTIONS -m$H2_STREAMS"
for _ in $(seq 1 "$ROUNDS"); do
    measure_h2 "$H2NG" "http://127.0.0.1:$NGINX_H2_PORT/auth/x"
    measure_h2 "$H2NONE" "http://127.0.0.1:$GATEWAY_PORT/none/x"
    measure_h2 "$H2HIT" "http://127.0.0.1:$GATEWAY_PORT/auth/x"
done

say "cold: restarted gateway, $COLD_TOKENS new tokens, $CONNECTIONS at a time"
stop_gateway
start_gateway
sign_in bench bench-password "$COLD_TOKENS" "$WORK/cold-tokens.txt"
BEFORE_I=$(calls introspect)
BEFORE_U=$(calls user_me)
# Each token twice at once (two requests in flight for it): single flight must hold.
paste -d'\n' "$WORK/cold-tokens.txt" "$WORK/cold-tokens.txt" |
    xargs -P "$CONNECTIONS" -I{} curl -sS -o /dev/null -w '%{http_code}\n' \
        -H "Authorization: Bearer {}" "http://127.0.0.1:$GATEWAY_PORT/auth/cold" >"$WORK/cold-status.txt"
COLD_NOT_OK=$(grep -cv '^200$' "$WORK/cold-status.txt" || true)
COLD_I=$(($(calls introspect) - BEFORE_I))
COLD_U=$(($(calls user_me) - BEFORE_U))
if [ "$COLD_I" -eq "$COLD_TOKENS" ] && [ "$COLD_U" -eq "$COLD_TOKENS" ] && [ "$COLD_NOT_OK" -eq 0 ]; then
    COLD_VERDICT="ok"
else
    COLD_VERDICT="MISMATCH"
fi
stop_gateway

mean() { local -n sums=$1; echo $((${sums[$2]} / ${RUNS[$2]})); }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "-"; else printf "%.2f", a / b }'; }
rps() { [ -n "${RUNS[$1]:-}" ] && mean SUM_RPS "$1" || echo 0; }
p99() { [ -n "${RUNS[$1]:-}" ] && mean SUM_P99 "$1" || echo 0; }

echo
echo "cloudbase-gateway load comparison: $CORES cores ($(lscpu | awk -F: '/Model name/ { gsub(/^ +/, "", $2); print $2 }')); servers on cpu $SERVER_CPUS, load on cpu $LOAD_CPUS"
echo "HTTP/1.1: wrk -t1 -c$CONNECTIONS -d$DURATION --latency, mean of $ROUNDS interleaved runs, $TOKENS tokens rotating"
echo "h2c: h2load -n$H2_REQUESTS -c$H2_CONNECTIONS -m$H2_STREAMS (p50 column: mean, p99 column: max)"
echo
printf '| %-38s | %10s | %9s | %9s |\n' "target" "requests/s" "p50 (us)" "p99 (us)"
printf '|%s|%s|%s|%s|\n' "----------------------------------------" "------------" "-----------" "-----------"
for name in "${ORDER[@]}"; do
    printf '| %-38s | %10s | %9s | %9s |\n' "$name" "$(mean SUM_RPS "$name")" \
        "$(mean SUM_P50 "$name")" "$(mean SUM_P99 "$name")"
done
echo
echo "gateway none / nginx plain proxy:       $(ratio "$(rps "$NONE")" "$(rps "$NG")")   (target >= 0.85; p99 $(p99 "$NONE") vs $(p99 "$NG") us)"
echo "gateway hits / gateway none:            $(ratio "$(rps "$HIT")" "$(rps "$NONE")")   (target >= 0.95)"
echo "gateway hits / nginx + Lua:             $(ratio "$(rps "$HIT")" "$(rps "$LUA")")   (target >= 1.7)"
echo "gateway none / bare hyper proxy:        $(ratio "$(rps "$NONE")" "$(rps "$BARE")")   (what the gateway's layers cost over hyper itself)"
echo "nginx auth_request + fwd / nginx plain: $(ratio "$(rps "$FWD")" "$(rps "$NG")")   (keeping nginx in front, authenticating every request)"
echo "h2c gateway none / h2c nginx:           $(ratio "$(rps "$H2NONE")" "$(rps "$H2NG")")   (target >= 0.85)"
echo "h2c gateway hits / h2c nginx:           $(ratio "$(rps "$H2HIT")" "$(rps "$H2NG")")"
echo "cold: $COLD_TOKENS new tokens, each twice at once -> introspect $COLD_I, user_me $COLD_U, non-200 $COLD_NOT_OK: $COLD_VERDICT"
[ "$COLD_VERDICT" = ok ]
