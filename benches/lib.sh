# Shared by benches/load.sh and benches/soak.sh (sourced, not run): the work directory and
# its cleanup, CPU pinning, installing what is missing, the release build, nginx configs
# and processes, signing in at the emulator and reading its counters.
#
# Before sourcing, set WORK_NAME (the temp directory's prefix). After it: WORK, PIDS,
# SERVER_CPUS, LOAD_CPUS, GATEWAY_BIN (once build_gateway ran).

CORES=$(nproc)
if [ "$CORES" -ge 2 ]; then
    SERVER_CPUS=${SERVER_CPUS:-1}
    LOAD_CPUS=${LOAD_CPUS:-0}
else
    SERVER_CPUS=${SERVER_CPUS:-0}
    LOAD_CPUS=${LOAD_CPUS:-0}
    echo "note: one core; the load generator and the servers share it" >&2
fi

WORK=$(mktemp -d "/tmp/${WORK_NAME:-cloudbase-gateway-bench}.XXXXXX")
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

say() { printf '\n== %s\n' "$*" >&2; }

# install_missing "command-or-/file package" ...: apt-get installs the packages whose
# command (or file, when it starts with /) is missing.
install_missing() {
    local need=() pair what pkg
    for pair in "$@"; do
        what=${pair% *}
        pkg=${pair#* }
        if [[ $what == /* ]]; then
            compgen -G "$what" >/dev/null || need+=("$pkg")
        else
            command -v "$what" >/dev/null || need+=("$pkg")
        fi
    done
    if [ ${#need[@]} -gt 0 ]; then
        say "installing ${need[*]}"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
}

build_gateway() {
    say "building (release)"
    cargo build --release --quiet --bin cloudbase-gateway
    GATEWAY_BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/cloudbase-gateway
}

NGINX_MODULES=/usr/lib/nginx/modules
mkdir -p "$WORK/nginx"

# The head of every nginx config: modules, one worker, no daemon, pid and error log in WORK.
nginx_head() { # name [module.so...]
    local name=$1 module
    shift
    for module in "$@"; do echo "load_module $NGINX_MODULES/$module;"; done
    cat <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx/$name.pid;
error_log $WORK/nginx/$name.error.log warn;
events { worker_connections 4096; }
EOF
}

# The temp paths of nginx `name`, inside WORK (a non-root prefix cannot use the defaults).
temp_paths() { # name
    local d="$WORK/nginx/$1"
    mkdir -p "$d"
    cat <<EOF
    client_body_temp_path $d/body;
    proxy_temp_path $d/proxy;
    fastcgi_temp_path $d/fastcgi;
    uwsgi_temp_path $d/uwsgi;
    scgi_temp_path $d/scgi;
EOF
}

# Writes $WORK/nginx/upstream.conf: an nginx answering every request "ok" on port $1.
write_upstream_conf() { # port
    {
        nginx_head upstream
        cat <<EOF
http {
    access_log off;
$(temp_paths upstream)
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$1 backlog=4096;
        location / { default_type text/plain; return 200 "ok\n"; }
    }
}
EOF
    } >"$WORK/nginx/upstream.conf"
}

wait_http() { # url
    for _ in $(seq 1 100); do
        curl -sS -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "no answer from $1" >&2
    exit 1
}

# Starts nginx with $WORK/nginx/$1.conf on SERVER_CPUS and waits for port $2.
start_nginx() { # name port
    taskset -c "$SERVER_CPUS" nginx -e "$WORK/nginx/$1.error.log" -c "$WORK/nginx/$1.conf" -p "$WORK/nginx" &
    PIDS+=("$!")
    wait_http "http://127.0.0.1:$2/"
}

# Starts `cloudbase-gateway emulator` with config $1 on SERVER_CPUS; EMULATOR_PORT is its port.
start_emulator() { # config
    taskset -c "$SERVER_CPUS" "$GATEWAY_BIN" emulator --config "$1" 2>"$WORK/emulator.log" &
    PIDS+=("$!")
    wait_http "http://127.0.0.1:$EMULATOR_PORT/healthz"
}

# Signs in user $1 (password $2) $3 times, one session (so one token) each, into file $4.
sign_in() { # user password count out
    local user=$1 password=$2 n=$3 out=$4 cfg="$WORK/signin.curl" k got
    : >"$cfg"
    for k in $(seq 1 "$n"); do
        [ "$k" -eq 1 ] || echo next >>"$cfg"
        printf 'url = "http://127.0.0.1:%s/auth/v1/signin"\nheader = "Content-Type: application/json"\ndata = "{\\"username\\":\\"%s\\",\\"password\\":\\"%s\\"}"\nwrite-out = "\\n"\n' \
            "$EMULATOR_PORT" "$user" "$password" >>"$cfg"
    done
    curl -sS -K "$cfg" | grep -o '"access_token":"[^"]*"' | cut -d'"' -f4 >"$out"
    got=$(wc -l <"$out")
    [ "$got" -eq "$n" ] || { echo "signed in $got of $n" >&2; exit 1; }
    [ "$(sort -u "$out" | wc -l)" -eq "$n" ] || { echo "tokens are not distinct" >&2; exit 1; }
}

# The emulator's call counter $1 (introspect, user_me, signin…).
calls() {
    curl -fsS "http://127.0.0.1:$EMULATOR_PORT/__emulator/stats" |
        grep -o "\"$1\":[0-9]*" | cut -d: -f2
}

# Puts the emulator into fault mode $1 (ok, hang, error500, garbage).
fault() {
    curl -fsS -o /dev/null -X POST -H 'Content-Type: application/json' \
        -d "{\"mode\":\"$1\"}" "http://127.0.0.1:$EMULATOR_PORT/__emulator/fault"
}

# Latency ("412.00us", "1.02ms", "1.5s") -> microseconds.
to_us() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) u = n; else if (v ~ /ms$/) u = n * 1000; else if (v ~ /s$/) u = n * 1000000; else u = n
        printf "%.0f", u }'
}
