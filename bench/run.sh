#!/usr/bin/env bash
# Side-by-side benchmark: dicomgate against HAProxy, nginx (stream) and
# stunnel on loopback, same RSA-2048 certificate, same backends, rounds
# interleaved (every proxy once per round and benchmark, order rotated),
# medians with min–max and ratios against HAProxy. See bench/README.md.
#
#   bench/run.sh            full run (waits for a quiet machine), writes bench/RESULTS.md
#   bench/run.sh --quick    tiny sizes, one round, no waiting; writes target/bench/RESULTS-quick.md
#
# Knobs (environment): ROUNDS, PROXIES, SINGLE, MULTI, FRAMES, RAW_MB, RAW_SUITE, ECHOSCU_N,
# INPROC_SEQ_N, INPROC_C8_N, IDLE_COUNTS, LOAD_MAX, LOAD_WAIT_S, OUT, DICOMGATE_BEFORE,
# SYSCALLS (count syscalls per raw run with perf; 1 if perf works), PROFILE (1: perf
# profiles of one extra raw run per dicomgate variant), BENCHES (which benchmarks run).
# Everything is bounded in count and time; only loopback is used; only the
# processes this script starts are stopped (by PID).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
WORK=$ROOT/target/bench/run
DATA=$ROOT/target/bench/data
DGBENCH=$ROOT/target/bench/release/dgbench
DICOMGATE=$ROOT/target/release/dicomgate
# The "-bytes" variants: the same code built with --features bench-baseline,
# the only build that accepts `relay_mode: bytes` (a plain byte copy).
DICOMGATE_BASELINE=$ROOT/target/bench/dicomgate-bench-baseline

QUICK=0
[[ ${1:-} == --quick ]] && QUICK=1
if ((QUICK)); then
    : "${ROUNDS:=1}" "${SINGLE:=4}" "${MULTI:=1}" "${FRAMES:=8}" "${RAW_MB:=64}" "${ECHOSCU_N:=8}"
    : "${INPROC_SEQ_N:=20}" "${INPROC_C8_N:=40}" "${IDLE_COUNTS:=50 100}" "${LOAD_WAIT_S:=0}"
    : "${OUT:=$ROOT/target/bench/RESULTS-quick.md}"
else
    # ~535 MB per bulk pass: 180 × 1.44 MB single-frame + 3 × 92 MB cine loops.
    : "${ROUNDS:=3}" "${SINGLE:=180}" "${MULTI:=3}" "${FRAMES:=100}" "${RAW_MB:=1024}" "${ECHOSCU_N:=96}"
    : "${INPROC_SEQ_N:=500}" "${INPROC_C8_N:=2000}" "${IDLE_COUNTS:=1000 5000}" "${LOAD_WAIT_S:=1200}"
    : "${OUT:=$BENCH/RESULTS.md}"
fi
: "${LOAD_MAX:=1.0}"
# The raw test's TLS 1.3 suite; the floor it is compared with is the same AEAD.
: "${RAW_SUITE:=aes256}"
: "${PROFILE:=0}"
: "${BENCHES:=bulk raw echoscu inproc idle}"
: "${PROXIES:=haproxy nginx stunnel dicomgate-1t dicomgate-1t-bytes dicomgate haproxy-tuned dicomgate-1t-tuned}"
# The memory benchmark skips the -tuned variants (a memcpy setting changes no allocation).
: "${IDLE_PROXIES:=haproxy nginx stunnel dicomgate-1t dicomgate-1t-bytes dicomgate}"
# DICOMGATE_BEFORE=/path/to/an/older/dicomgate adds it as "dicomgate-1t-before":
# a same-run before/after for a relay change.
if [[ -n ${DICOMGATE_BEFORE:-} ]]; then
    [[ " $PROXIES " == *" dicomgate-1t-before "* ]] || PROXIES="$PROXIES dicomgate-1t-before"
    [[ " $IDLE_PROXIES " == *" dicomgate-1t-before "* ]] || IDLE_PROXIES="$IDLE_PROXIES dicomgate-1t-before"
fi
# glibc < 2.39 uses `rep movsb` for 2 KiB–L2-sized memcpy on AMD Zen 3/4, which
# is up to 20× slower for some address alignments (glibc bug 30994). The
# -tuned variants run with the vector copy instead, HAProxy and dicomgate alike.
TUNED_ENV=GLIBC_TUNABLES=glibc.cpu.x86_rep_movsb_threshold=268435456

# Ports (below the ephemeral range, so they cannot collide with port-0 tests).
STORESCP_PORT=21112
SINK_PORT=21113
declare -A STORE_PORT=([haproxy]=22001 [nginx]=22002 [stunnel]=22003 [dicomgate-1t]=22004 [dicomgate-1t-bytes]=22005
    [dicomgate]=22006 [haproxy-tuned]=22007 [dicomgate-1t-tuned]=22008 [dicomgate-1t-before]=22009)
declare -A SINKP_PORT=([haproxy]=22101 [nginx]=22102 [stunnel]=22103 [dicomgate-1t]=22104 [dicomgate-1t-bytes]=22105
    [dicomgate]=22106 [haproxy-tuned]=22107 [dicomgate-1t-tuned]=22108 [dicomgate-1t-before]=22109)
declare -A PID=()
BACKEND_PIDS=()
export TCP_NODELAY=1 # every DCMTK process: DCMTK 3.6.7 leaves Nagle on otherwise
CLK_TCK=$(getconf CLK_TCK)

log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

cleanup() {
    local p
    for p in "${PID[@]}" "${BACKEND_PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${PID[@]}" "${BACKEND_PIDS[@]}"; do
        wait "$p" 2>/dev/null || true
    done
}
trap cleanup EXIT

# ---------------------------------------------------------------- setup

install_tools() {
    local missing=()
    command -v haproxy >/dev/null || missing+=(haproxy)
    command -v nginx >/dev/null || missing+=(nginx)
    [[ -e /usr/lib/nginx/modules/ngx_stream_module.so ]] || missing+=(libnginx-mod-stream)
    command -v stunnel4 >/dev/null || missing+=(stunnel4)
    command -v storescp >/dev/null || missing+=(dcmtk)
    command -v openssl >/dev/null || missing+=(openssl)
    command -v ss >/dev/null || missing+=(iproute2)
    command -v python3 >/dev/null || missing+=(python3)
    if ((PROFILE)); then command -v perf >/dev/null || missing+=(linux-perf); fi
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

build() {
    log "building dicomgate (release) and the bench tools"
    # The baseline first, copied aside; then the product build, so that
    # target/release/dicomgate is what every other variant runs.
    if [[ " $PROXIES " == *" dicomgate-1t-bytes "* ]]; then
        (cd "$ROOT" && cargo build --release --quiet --features bench-baseline --bin dicomgate)
        mkdir -p "$(dirname "$DICOMGATE_BASELINE")"
        cp "$DICOMGATE" "$DICOMGATE_BASELINE"
    fi
    (cd "$ROOT" && cargo build --release --quiet --bin dicomgate)
    (cd "$BENCH" && cargo build --release --quiet --target-dir "$ROOT/target/bench")
}

make_data() {
    local stamp="$DATA/.made-$SINGLE-$MULTI-$FRAMES"
    if [[ ! -e $stamp ]]; then
        log "generating $SINGLE single-frame and $MULTI × $FRAMES-frame ultrasound datasets"
        rm -rf "$DATA" && mkdir -p "$DATA"
        python3 "$BENCH/gen_dicom.py" "$DATA" "$SINGLE" "$MULTI" "$FRAMES"
        touch "$stamp"
    fi
    SINGLE_BYTES=$(du -cb "$DATA"/single/*.dcm | tail -1 | cut -f1)
    MULTI_BYTES=$(du -cb "$DATA"/multi/*.dcm | tail -1 | cut -f1)
}

make_certificate() {
    rm -rf "$WORK" && mkdir -p "$WORK"
    "$DICOMGATE" gen-cert --dir "$WORK" --cn bench.local --san 127.0.0.1 --key-type rsa2048 >"$WORK/gen-cert.log"
    CERT=$WORK/scp_cert.pem
    KEY=$WORK/scp_key.pem
    cat "$CERT" "$KEY" >"$WORK/haproxy.pem"
}

write_configs() {
    cat >"$WORK/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn $MAXCONN
    ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
    mode tcp
    timeout connect 10s
    timeout client 10m
    timeout server 10m
frontend store
    bind 127.0.0.1:${STORE_PORT[haproxy]} ssl crt $WORK/haproxy.pem
    default_backend storescp
frontend sink
    bind 127.0.0.1:${SINKP_PORT[haproxy]} ssl crt $WORK/haproxy.pem
    default_backend sink
backend storescp
    server s1 127.0.0.1:$STORESCP_PORT
backend sink
    server s1 127.0.0.1:$SINK_PORT
EOF
    sed -e "s/:${STORE_PORT[haproxy]} /:${STORE_PORT[haproxy-tuned]} /" -e "s/:${SINKP_PORT[haproxy]} /:${SINKP_PORT[haproxy-tuned]} /" \
        "$WORK/haproxy.cfg" >"$WORK/haproxy-tuned.cfg"
    mkdir -p "$WORK/nginx"
    cat >"$WORK/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 1;
worker_rlimit_nofile $FDS;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections $((MAXCONN * 2)); }
stream {
    ssl_certificate $CERT;
    ssl_certificate_key $KEY;
    ssl_protocols TLSv1.2 TLSv1.3;
    proxy_timeout 10m;
    server { listen 127.0.0.1:${STORE_PORT[nginx]} ssl; proxy_pass 127.0.0.1:$STORESCP_PORT; }
    server { listen 127.0.0.1:${SINKP_PORT[nginx]} ssl; proxy_pass 127.0.0.1:$SINK_PORT; }
}
EOF
    cat >"$WORK/stunnel.conf" <<EOF
foreground = yes
pid =
; warnings only: no per-connection log lines (HAProxy and nginx log none here either)
debug = 4
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
[store]
accept = 127.0.0.1:${STORE_PORT[stunnel]}
connect = 127.0.0.1:$STORESCP_PORT
cert = $CERT
key = $KEY
[sink]
accept = 127.0.0.1:${SINKP_PORT[stunnel]}
connect = 127.0.0.1:$SINK_PORT
cert = $CERT
key = $KEY
EOF
    local name mode
    for name in dicomgate-1t dicomgate-1t-bytes dicomgate dicomgate-1t-tuned dicomgate-1t-before; do
        mode=dicom
        [[ $name == *-bytes ]] && mode=bytes
        cat >"$WORK/$name.yaml" <<EOF
# The audit line per association stays on (level info, to a file): that is
# how dicomgate runs in production.
log: {level: info}
backends:
  storescp: {ae_title: STORESCP, servers: ["127.0.0.1:$STORESCP_PORT"], health_check: {mode: "off"}}
  sink: {ae_title: SINK, servers: ["127.0.0.1:$SINK_PORT"], health_check: {mode: "off"}}
listeners:
  store:
    listen: 127.0.0.1:${STORE_PORT[$name]}
    tls: {certificate: $CERT, private_key: $KEY}
    allow: [127.0.0.0/8]
    routes: {"*": storescp}
    max_connections: $MAXCONN
    relay_mode: $mode
    timeouts: {acse: 10m, dimse: 10m}
  sink:
    listen: 127.0.0.1:${SINKP_PORT[$name]}
    tls: {certificate: $CERT, private_key: $KEY}
    allow: [127.0.0.0/8]
    routes: {"*": sink}
    max_connections: $MAXCONN
    relay_mode: $mode
    timeouts: {acse: 10m, dimse: 10m}
EOF
    done
}

# ---------------------------------------------------------------- processes

listening() { [[ -n $(ss -ltnH "sport = :$1") ]]; }

wait_listening() {
    local port=$1 pid=$2 i
    for i in $(seq 100); do
        listening "$port" && return 0
        kill -0 "$pid" 2>/dev/null || die "process $pid exited before listening on $port"
        sleep 0.1
    done
    die "nothing listening on $port after 10 s"
}

start_backends() {
    local p
    for p in $STORESCP_PORT $SINK_PORT "${STORE_PORT[@]}" "${SINKP_PORT[@]}"; do
        listening "$p" && die "port $p is already in use"
    done
    # Receives and discards (--ignore); one association at a time, as a PACS
    # in front of a gateway usually sees.
    storescp --ignore -aet STORESCP "$STORESCP_PORT" >"$WORK/storescp.log" 2>&1 &
    BACKEND_PIDS+=($!)
    wait_listening "$STORESCP_PORT" $!
    "$DGBENCH" sink --listen "127.0.0.1:$SINK_PORT" >"$WORK/sink.log" 2>&1 &
    BACKEND_PIDS+=($!)
    wait_listening "$SINK_PORT" $!
}

start_proxy() {
    local name=$1
    case $name in
    haproxy) haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 & ;;
    haproxy-tuned) env "$TUNED_ENV" haproxy -db -f "$WORK/haproxy-tuned.cfg" >"$WORK/$name.log" 2>&1 & ;;
    nginx) nginx -p "$WORK/nginx" -c "$WORK/nginx.conf" >"$WORK/nginx.log" 2>&1 & ;;
    stunnel) stunnel4 "$WORK/stunnel.conf" >"$WORK/stunnel.log" 2>&1 & ;;
    dicomgate-1t)
        TOKIO_WORKER_THREADS=1 "$DICOMGATE" run --config "$WORK/$name.yaml" >"$WORK/$name.log" 2>&1 &
        ;;
    dicomgate-1t-bytes)
        TOKIO_WORKER_THREADS=1 "$DICOMGATE_BASELINE" run --config "$WORK/$name.yaml" >"$WORK/$name.log" 2>&1 &
        ;;
    dicomgate-1t-tuned)
        env "$TUNED_ENV" TOKIO_WORKER_THREADS=1 "$DICOMGATE" run --config "$WORK/$name.yaml" >"$WORK/$name.log" 2>&1 &
        ;;
    dicomgate-1t-before)
        TOKIO_WORKER_THREADS=1 "$DICOMGATE_BEFORE" run --config "$WORK/$name.yaml" >"$WORK/$name.log" 2>&1 &
        ;;
    dicomgate) env -u TOKIO_WORKER_THREADS "$DICOMGATE" run --config "$WORK/$name.yaml" >"$WORK/$name.log" 2>&1 & ;;
    *) die "unknown proxy $name" ;;
    esac
    PID[$name]=$!
    wait_listening "${STORE_PORT[$name]}" "${PID[$name]}"
    wait_listening "${SINKP_PORT[$name]}" "${PID[$name]}"
}

stop_proxy() {
    local name=$1 p=${PID[$1]:-}
    [[ -n $p ]] || return 0
    kill "$p" 2>/dev/null || true
    local i
    for i in $(seq 100); do
        kill -0 "$p" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    unset "PID[$name]"
    for i in $(seq 100); do
        listening "${STORE_PORT[$name]}" || listening "${SINKP_PORT[$name]}" || return 0
        sleep 0.1
    done
}

# The proxy process and its children (nginx's worker).
proxy_pids() {
    local p=$1
    echo "$p"
    cat /proc/"$p"/task/*/children 2>/dev/null || true
}

# utime+stime in clock ticks, summed over the proxy's processes.
cpu_ticks() {
    local total=0 p s
    for p in $(proxy_pids "$1"); do
        s=$(cat /proc/"$p"/stat 2>/dev/null) || continue
        s=${s##*) }
        # shellcheck disable=SC2086
        set -- $s
        total=$((total + ${12} + ${13}))
    done
    echo "$total"
}

rss_kib() {
    local total=0 p v
    for p in $(proxy_pids "$1"); do
        v=$(awk '/^VmRSS:/ {print $2}' /proc/"$p"/status 2>/dev/null || echo 0)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

worker_threads() {
    local p=$1
    grep -c '^tokio-r' /proc/"$p"/task/*/comm 2>/dev/null | awk -F: '{s += $NF} END {print s + 0}'
}

# ---------------------------------------------------------------- results

RESULTS=$WORK/results.tsv
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$ROUND" "$1" "$2" "$3" "$4" >>"$RESULTS"; }
now() { echo "$EPOCHREALTIME"; }
fdiv() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "nan"; else printf "%.6f", a / b }'; }
fsub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", a - b }'; }
# Nearest-rank percentile of the numbers on stdin.
percentile() { sort -n | awk -v p="$1" '{v[NR] = $1} END {i = int((NR - 1) * p + 1.5); if (i > NR) i = NR; print v[i]}'; }
kv() { tr ' ' '\n' <<<"$1" | awk -F= -v k="$2" '$1 == k {print $2}'; }

# ---------------------------------------------------------------- benchmarks

bench_bulk() {
    local name=$1 set=$2 bytes=$3 pid=${PID[$1]}
    local c0 c1 t0 t1
    c0=$(cpu_ticks "$pid")
    t0=$(now)
    timeout 300 storescu +tla -ic -aet BUTTERFLY -aec STORESCP +sd 127.0.0.1 "${STORE_PORT[$name]}" "$DATA/$set" \
        >>"$WORK/storescu.log" 2>&1 || die "storescu through $name failed (see $WORK/storescu.log)"
    t1=$(now)
    c1=$(cpu_ticks "$pid")
    local secs cpu
    secs=$(fsub "$t1" "$t0")
    cpu=$(fdiv $((c1 - c0)) "$CLK_TCK")
    record "bulk-$set" "$name" mb_per_s "$(fdiv "$bytes" "$(awk -v s="$secs" 'BEGIN {print s * 1e6}')")"
    record "bulk-$set" "$name" cpu_s_per_gb "$(fdiv "$cpu" "$(awk -v b="$bytes" 'BEGIN {print b / 1e9}')")"
}

bench_raw() {
    local name=$1 pid=${PID[$1]} c0 c1 out
    c0=$(cpu_ticks "$pid")
    local counter=
    if ((SYSCALLS)); then
        # Every syscall the proxy's processes enter during the run (a tracepoint: no slowdown worth the name).
        perf stat -x, -e raw_syscalls:sys_enter -o "$WORK/syscalls.$name" -p "$(proxy_pids "$pid" | paste -sd,)" \
            >/dev/null 2>&1 &
        counter=$!
        sleep 0.2
    fi
    out=$(timeout 300 "$DGBENCH" raw --connect "127.0.0.1:${SINKP_PORT[$name]}" --bytes $((RAW_MB << 20)) \
        --pdu 1048576 --suite "$RAW_SUITE" --seconds 240) || die "raw through $name failed"
    c1=$(cpu_ticks "$pid")
    if [[ -n $counter ]]; then
        kill -INT "$counter" 2>/dev/null || true
        wait "$counter" 2>/dev/null || true
        local calls
        calls=$(awk -F, '/raw_syscalls:sys_enter/ {print $1}' "$WORK/syscalls.$name")
        [[ $calls =~ ^[0-9]+$ ]] && record raw "$name" syscalls_per_mb "$(fdiv "$calls" "$(kv "$out" bytes | awk '{print $1 / 1e6}')")"
    fi
    local bytes cpu
    bytes=$(kv "$out" bytes)
    cpu=$(fdiv $((c1 - c0)) "$CLK_TCK")
    record raw "$name" mb_per_s "$(kv "$out" mb_per_s)"
    record raw "$name" cpu_s_per_gb "$(fdiv "$cpu" "$(awk -v b="$bytes" 'BEGIN {print b / 1e9}')")"
    echo "$out" >>"$WORK/raw.log"
}

# One echoscu process per association, like a script or a modality would.
bench_echoscu() {
    local name=$1 conc=$2 pid=${PID[$1]} n=$ECHOSCU_N
    local dir=$WORK/echoscu.$name.$conc c0 c1 t0 t1 w
    rm -rf "$dir" && mkdir -p "$dir"
    c0=$(cpu_ticks "$pid")
    t0=$(now)
    local workers=()
    for w in $(seq "$conc"); do
        (
            local i a b
            for i in $(seq $((n / conc))); do
                a=$EPOCHREALTIME
                if timeout 20 echoscu +tla -ic -aet BUTTERFLY -aec STORESCP 127.0.0.1 "${STORE_PORT[$name]}" \
                    >>"$dir/log" 2>&1; then
                    b=$EPOCHREALTIME
                    awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f\n", (b - a) * 1000 }' >>"$dir/lat.$w"
                else
                    echo fail >>"$dir/fail"
                fi
            done
        ) &
        workers+=($!)
    done
    wait_pids "${workers[@]}"
    t1=$(now)
    c1=$(cpu_ticks "$pid")
    local ok
    ok=$(cat "$dir"/lat.* 2>/dev/null | wc -l)
    ((ok > 0)) || die "no echoscu association succeeded through $name (see $dir/log)"
    local b=echoscu-c$conc
    record "$b" "$name" per_s "$(fdiv "$ok" "$(fsub "$t1" "$t0")")"
    record "$b" "$name" p50_ms "$(cat "$dir"/lat.* | percentile 0.50)"
    record "$b" "$name" p99_ms "$(cat "$dir"/lat.* | percentile 0.99)"
    record "$b" "$name" cpu_ms_per_assoc "$(fdiv "$(((c1 - c0) * 1000))" "$((ok * CLK_TCK))")"
    record "$b" "$name" errors "$(cat "$dir/fail" 2>/dev/null | wc -l)"
}

# Waits for the given background PIDs (the echoscu workers), bounded.
wait_pids() {
    local i p alive
    for i in $(seq 1200); do
        alive=0
        for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
        if ((!alive)); then
            for p in "$@"; do wait "$p" 2>/dev/null || true; done
            return 0
        fi
        sleep 0.25
    done
    die "echoscu workers still running after 300 s"
}

bench_inproc() {
    local name=$1 conc=$2 n=$3 pid=${PID[$1]} c0 c1 out
    c0=$(cpu_ticks "$pid")
    out=$(timeout 200 "$DGBENCH" assoc --connect "127.0.0.1:${STORE_PORT[$name]}" --count "$n" \
        --concurrency "$conc" --seconds 180 --suite aes256) || die "assoc through $name failed"
    c1=$(cpu_ticks "$pid")
    local ok b=inproc-c$conc
    ok=$(kv "$out" ok)
    ((ok > 0)) || die "no in-process association succeeded through $name: $out"
    record "$b" "$name" per_s "$(kv "$out" per_s)"
    record "$b" "$name" p50_ms "$(kv "$out" p50_ms)"
    record "$b" "$name" p99_ms "$(kv "$out" p99_ms)"
    record "$b" "$name" cpu_ms_per_assoc "$(fdiv "$(((c1 - c0) * 1000))" "$((ok * CLK_TCK))")"
    record "$b" "$name" errors "$(kv "$out" errors)"
    echo "$name $out" >>"$WORK/inproc.log"
}

# Fresh proxy, a few warm-up connections, then COUNT connections that finish
# the TLS handshake (and, with "assoc", an A-ASSOCIATE exchange) and idle.
bench_idle() {
    local name=$1 count=$2 kind=$3
    stop_proxy "$name"
    start_proxy "$name"
    local pid=${PID[$name]} extra=() base after out client i
    [[ $kind == assoc ]] && extra=(--associate)
    timeout 60 "$DGBENCH" idle --connect "127.0.0.1:${SINKP_PORT[$name]}" --count 16 --hold 0 "${extra[@]}" \
        >/dev/null || die "idle warm-up through $name failed"
    sleep 1
    base=$(rss_kib "$pid")
    out=$WORK/idle.$name.$count.$kind
    # From 8 loopback addresses: dicomgate lets one address hold at most a
    # quarter of its pre-association budget, and this measures held connections.
    "$DGBENCH" idle --connect "127.0.0.1:${SINKP_PORT[$name]}" --count "$count" --hold 300 --sources 8 "${extra[@]}" \
        >"$out" 2>"$out.err" &
    client=$!
    for i in $(seq 600); do
        grep -q "^idle ready" "$out" 2>/dev/null && break
        kill -0 "$client" 2>/dev/null || break
        sleep 0.2
    done
    grep -q '^idle ready' "$out" || { kill "$client" 2>/dev/null; wait "$client" 2>/dev/null || true; die "idle client through $name did not finish (see $out.err)"; }
    # Let the last handshakes and backend connects settle.
    sleep 2
    after=$(rss_kib "$pid")
    kill "$client" 2>/dev/null || true
    wait "$client" 2>/dev/null || true
    local ready
    ready=$(kv "$(grep '^idle ready' "$out")" ready)
    ((ready > 0)) || die "no idle connection through $name"
    record "idle-$kind-$count" "$name" kib_per_conn "$(fdiv $((after - base)) "$ready")"
    record "idle-$kind-$count" "$name" failed $((count - ready))
}

# The floor, measured in every round beside the figures: AES-GCM on one
# core through aws-lc-rs (what the gateway uses; 16 KiB records, in place)
# and through OpenSSL (`openssl speed`, for reference).
measure_floor() {
    local out suite rate
    for suite in aes256 aes128; do
        out=$("$DGBENCH" aead --suite "$suite" --seconds 2) || die "dgbench aead failed"
        record floor "aead-$suite" cpu_s_per_gb "$(kv "$out" cpu_s_per_gb)"
    done
    for suite in aes-256-gcm aes-128-gcm; do
        # The last figure of the last line: bytes/s in thousands ("1234567.89k").
        rate=$(openssl speed -seconds 2 -bytes 16384 -evp "$suite" 2>/dev/null | awk 'NF {last = $NF} END {sub(/k$/, "", last); print last}')
        [[ $rate =~ ^[0-9.]+$ ]] && record floor "openssl-${suite%-gcm}" cpu_s_per_gb "$(fdiv 1e6 "$rate")"
    done
}

# One more raw run through each dicomgate variant under `perf record`
# (call graphs from DWARF); the top of each profile goes into RESULTS.md.
profile_raw() {
    local name pid
    for name in $PROXIES; do
        [[ $name == dicomgate-1t || $name == dicomgate-1t-before || $name == haproxy ]] || continue
        pid=${PID[$name]}
        perf record -q -F 1999 --call-graph dwarf,16384 -o "$WORK/perf.$name.data" -p "$pid" >/dev/null 2>&1 &
        local recorder=$!
        sleep 0.5
        timeout 300 "$DGBENCH" raw --connect "127.0.0.1:${SINKP_PORT[$name]}" --bytes $((RAW_MB << 20)) \
            --pdu 1048576 --suite "$RAW_SUITE" --seconds 240 >/dev/null || die "profiled raw through $name failed"
        kill -INT "$recorder" 2>/dev/null || true
        wait "$recorder" 2>/dev/null || true
        perf report -i "$WORK/perf.$name.data" --no-children --sort symbol --percent-limit 1 --stdio 2>/dev/null |
            grep -E '^ +[0-9.]+%' | sed -E 's/ +- +- *$//' | head -20 >"$WORK/profile.$name.txt" || true
        rm -f "$WORK/perf.$name.data"
    done
}

# ---------------------------------------------------------------- run

load1() { cut -d' ' -f1 /proc/loadavg; }

wanted() { [[ " $BENCHES " == *" $1 "* ]]; }

wait_for_quiet() {
    local waited=0
    while awk -v l="$(load1)" -v m="$LOAD_MAX" 'BEGIN { exit !(l >= m) }'; do
        if ((waited >= LOAD_WAIT_S)); then
            log "load average still $(load1) after ${waited}s; running anyway (recorded)"
            return 0
        fi
        log "load average $(load1) >= $LOAD_MAX; waiting"
        sleep 30
        waited=$((waited + 30))
    done
}

# The list of proxies rotated by the round number, so no proxy always goes first.
rotated() {
    local -a all
    read -r -a all <<<"$PROXIES"
    local n=${#all[@]} i
    for i in $(seq 0 $((n - 1))); do
        echo "${all[$(((i + ROUND) % n))]}"
    done
}

main() {
    # As many descriptors as allowed (containers cap the hard limit); a
    # proxy needs two per idle connection.
    ulimit -n "$(ulimit -Hn)"
    FDS=$(ulimit -n)
    MAXCONN=$(((FDS - 200) / 2))
    local c
    for c in $IDLE_COUNTS; do
        ((c <= MAXCONN)) || die "IDLE_COUNTS has $c but only $FDS descriptors are allowed (ulimit -Hn)"
    done
    install_tools
    : "${SYSCALLS:=$(perf stat -e raw_syscalls:sys_enter true >/dev/null 2>&1 && echo 1 || echo 0)}"
    build
    make_data
    make_certificate
    write_configs
    : >"$RESULTS"
    start_backends
    local name
    for name in $PROXIES; do start_proxy "$name"; done
    for name in $PROXIES; do
        case $name in dicomgate*) echo "$name worker_threads=$(worker_threads "${PID[$name]}")" >>"$WORK/threads" ;; esac
    done

    # The physical limit: AES-GCM on one core (one process, 3 s per size).
    openssl speed -seconds 3 -bytes 16384 -evp aes-128-gcm >"$WORK/openssl-aes128.txt" 2>/dev/null || true
    openssl speed -seconds 3 -bytes 16384 -evp aes-256-gcm >"$WORK/openssl-aes256.txt" 2>/dev/null || true
    openssl speed -seconds 3 rsa2048 >"$WORK/openssl-rsa.txt" 2>/dev/null || true

    wait_for_quiet
    echo "load_before $(cat /proc/loadavg)" >"$WORK/load"
    local started=$SECONDS
    for ROUND in $(seq "$ROUNDS"); do
        log "round $ROUND/$ROUNDS"
        measure_floor
        # No proxy: what the client and the sink can do on their own.
        local out
        out=$("$DGBENCH" raw --connect "127.0.0.1:$SINK_PORT" --bytes $((RAW_MB << 20)) --suite plain --seconds 120)
        record raw direct mb_per_s "$(kv "$out" mb_per_s)"
        if wanted bulk; then
            for name in $(rotated); do bench_bulk "$name" single "$SINGLE_BYTES"; done
            for name in $(rotated); do bench_bulk "$name" multi "$MULTI_BYTES"; done
        fi
        if wanted raw; then
            for name in $(rotated); do bench_raw "$name"; done
        fi
        if wanted echoscu; then
            for name in $(rotated); do bench_echoscu "$name" 1; done
            for name in $(rotated); do bench_echoscu "$name" 8; done
        fi
        if wanted inproc; then
            for name in $(rotated); do bench_inproc "$name" 1 "$INPROC_SEQ_N"; done
            for name in $(rotated); do bench_inproc "$name" 8 "$INPROC_C8_N"; done
        fi
        wanted idle || { echo "load_round_$ROUND $(cat /proc/loadavg)" >>"$WORK/load"; continue; }
        local count
        for count in $IDLE_COUNTS; do
            for name in $(rotated); do
                if [[ " $IDLE_PROXIES " == *" $name "* ]]; then bench_idle "$name" "$count" tls; fi
            done
        done
        local last=${IDLE_COUNTS##* }
        for name in $(rotated); do
            if [[ " $IDLE_PROXIES " == *" $name "* ]]; then bench_idle "$name" "$last" assoc; fi
        done
        echo "load_round_$ROUND $(cat /proc/loadavg)" >>"$WORK/load"
    done
    echo "load_after $(cat /proc/loadavg)" >>"$WORK/load"
    echo "duration_s $((SECONDS - started))" >>"$WORK/load"
    if ((PROFILE)); then
        log "profiling one raw run per dicomgate variant (perf record)"
        profile_raw
    fi

    {
        echo "nproc $(nproc)"
        echo "cpu $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
        echo "kernel $(uname -r)"
        echo "date $(date -u +%Y-%m-%dT%H:%MZ)"
        echo "haproxy $(haproxy -v | head -1)"
        echo "nginx $(nginx -v 2>&1)"
        echo "stunnel $(stunnel4 -version 2>&1 | grep -m1 -o "stunnel [0-9.]*.*")"
        echo "openssl $(openssl version)"
        echo "dcmtk $(storescu --version | head -1)"
        echo "dicomgate $(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo unknown)"
        echo "before ${DICOMGATE_BEFORE:-}"
        echo "glibc $(ldd --version | head -1)"
        echo "tuned_env $TUNED_ENV"
        echo "rustc $(rustc --version)"
        echo "rounds $ROUNDS"
        echo "raw_mb $RAW_MB"
        echo "raw_suite $RAW_SUITE"
        echo "single $SINGLE ${SINGLE_BYTES}"
        echo "multi $MULTI $FRAMES ${MULTI_BYTES}"
        echo "echoscu_n $ECHOSCU_N"
        echo "inproc $INPROC_SEQ_N $INPROC_C8_N"
    } >"$WORK/machine"
    python3 "$BENCH/report.py" "$WORK" >"$OUT"
    log "wrote $OUT"
}

main "$@"
