#!/usr/bin/env bash
# Benchmarks the gateway against a canned upstream, in one run, and prints a markdown table.
#
# Usage: scripts/bench.sh
#   Environment (all optional): BENCH_SECONDS=10 (length of each wrk run), BENCH_STREAMS=1000
#   (streams held open at once), BENCH_UPSTREAM_PORT=18081, BENCH_GATEWAY_PORT=18080,
#   BENCH_KEEP=1 (keep the temp dir with the configs, logs and wrk outputs).
#
# What it does:
#   1. Installs what is missing (Debian's nginx-light, wrk, curl, python3; apt-get needs root
#      or sudo) and runs `cargo build --release`.
#   2. Starts nginx on 127.0.0.1:$BENCH_UPSTREAM_PORT as a canned OpenRouter
#      (scripts/bench/nginx.conf.in). The gateway's OpenRouter provider POSTs every chat request
#      to `<base_url>/chat/completions`, stream or not, and nginx cannot read a body without
#      proxying it, so the one location picks its canned reply by Content-Length: the request
#      bodies in scripts/bench/ are sized so that request.json (804 bytes) gets the
#      chat.completion JSON, request-stream.json (1,124 bytes) the SSE stream at full speed and
#      request-hold.json (2,348 bytes) the same stream trickled over about 6 s. The direct and
#      the gateway measurements send the same bodies to the same location, so both pay the same.
#   3. Starts target/release/quantized with a fresh database in a temp dir, OpenRouter's
#      base_url pointing at nginx, and creates a license with a large balance and a key through
#      the admin API. Auth, strict validation, the durable group commit of the ledger and the
#      usage rows are on, and the log is the default (one line a request, into a file).
#   4. Measures the upstream called directly and the gateway in front of it, one after the
#      other: latency at 1 connection and throughput at 32 connections for non-stream chat
#      completions (wrk), streaming requests/s at 32 connections (wrk), streaming time to
#      first byte at 1 connection (curl's time_starttransfer over one kept-alive connection),
#      the gateway's peak RSS, its RSS with $BENCH_STREAMS streams open at once
#      (scripts/bench/hold.py), the ledger's commit batch size (from GET /metrics, when the
#      build has it) and how many of the 200s the clients saw have a committed usage row.
#   5. Prints the table with the machine and the date, and stops what it started, by PID.
set -euo pipefail

usage() { sed -n '4,7s/^# \{0,1\}//p' "$0" >&2; }
if [ $# -gt 0 ]; then
    usage
    exit 2
fi

cd "$(dirname "$0")/.."
root=$PWD
bench=$root/scripts/bench
seconds=${BENCH_SECONDS:-10}
streams=${BENCH_STREAMS:-1000}
up_port=${BENCH_UPSTREAM_PORT:-18081}
gw_port=${BENCH_GATEWAY_PORT:-18080}
up_url=http://127.0.0.1:$up_port/v1
gw_url=http://127.0.0.1:$gw_port/v1

say() { printf '%s\n' "bench: $*" >&2; }
die() {
    say "$*"
    exit 1
}

# --- 1. tools and build ------------------------------------------------------------------

install_packages() {
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || die "missing $*: install them (apt-get install $*) or run as root"
        sudo=(sudo)
    fi
    say "installing $* ..."
    # Keep the package's own nginx service from starting on port 80: we run our own.
    local policy=/usr/sbin/policy-rc.d added_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
        "${sudo[@]}" chmod 755 "$policy"
        added_policy=1
    fi
    local status=0
    "${sudo[@]}" apt-get update -qq &&
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends "$@" >/dev/null || status=$?
    if [ -n "$added_policy" ]; then
        "${sudo[@]}" rm -f "$policy"
    fi
    [ "$status" -eq 0 ] || die "apt-get install $* failed"
}

nginx_bin=$(command -v nginx || true)
[ -n "$nginx_bin" ] || [ ! -x /usr/sbin/nginx ] || nginx_bin=/usr/sbin/nginx
missing=()
[ -n "$nginx_bin" ] || missing+=(nginx-light)
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
    install_packages "${missing[@]}"
    nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
fi

say "cargo build --release ..."
cargo build --release --quiet
gateway_bin=${CARGO_TARGET_DIR:-$root/target}/release/quantized

# --- processes we start, and their cleanup ------------------------------------------------

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in "$up_port" "$gw_port"; do
    ! port_in_use "$port" || die "port $port is in use; set BENCH_UPSTREAM_PORT / BENCH_GATEWAY_PORT"
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/quantized-bench.XXXXXX")
nginx_pid=""
gateway_pid=""

stop() { # stop PID: TERM, then KILL after 10 s
    local pid=$1 _
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    [ -z "$gateway_pid" ] || stop "$gateway_pid"
    [ -z "$nginx_pid" ] || stop "$nginx_pid"
    if [ "$status" -ne 0 ]; then
        say "failed; logs kept in $tmp"
    elif [ -n "${BENCH_KEEP:-}" ]; then
        say "logs kept in $tmp"
    else
        rm -rf "$tmp"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for() { # wait_for URL PID NAME: until URL answers, or PID died, or 10 s passed
    local _
    for _ in $(seq 100); do
        curl -s -o /dev/null "$1" && return 0
        kill -0 "$2" 2>/dev/null || die "$3 exited at start; see $tmp"
        sleep 0.1
    done
    die "$3 did not answer at $1 within 10 s; see $tmp"
}

# The streams, and the sockets they need on both sides of the gateway.
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((4 * streams + 1024)) ]; then
    ulimit -n $((4 * streams + 1024)) 2>/dev/null ||
        die "ulimit -n $(ulimit -n) is too low for $streams streams; raise it or lower BENCH_STREAMS"
fi

# --- 2. the canned upstream ---------------------------------------------------------------

python3 - "$bench" "$tmp" "$up_port" <<'EOF'
import sys
bench, tmp, port = sys.argv[1:4]
def literal(name):
    # nginx unescapes \\ and \' inside a quoted string; a $ would start a variable.
    text = open(f"{bench}/{name}").read()
    assert "$" not in text, f"{name}: '$' is not allowed in a canned body"
    return text.replace("\\", "\\\\").replace("'", "\\'")
conf = open(f"{bench}/nginx.conf.in").read()
for key, value in {"@TMP@": tmp, "@PORT@": port, "@COMPLETION@": literal("completion.json").strip(),
                   "@STREAM@": literal("stream.sse")}.items():
    conf = conf.replace(key, value)
open(f"{tmp}/nginx.conf", "w").write(conf)
EOF

say "starting nginx on 127.0.0.1:$up_port"
"$nginx_bin" -c "$tmp/nginx.conf" -p "$tmp" -e "$tmp/nginx-error.log" 2>"$tmp/nginx-stderr.log" &
nginx_pid=$!
wait_for "http://127.0.0.1:$up_port/" "$nginx_pid" nginx

# --- 3. the gateway -------------------------------------------------------------------------

admin_token=bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
cat >"$tmp/bench.toml" <<EOF
listen = "127.0.0.1:$gw_port"
database = "$tmp/bench.db"
admin_token = "$admin_token"
models = "$root/data/models.toml"

[providers.openrouter]
base_url = "$up_url"
api_key = "sk-or-bench"
EOF

say "starting the gateway on 127.0.0.1:$gw_port"
"$gateway_bin" serve --config "$tmp/bench.toml" 2>"$tmp/gateway.log" &
gateway_pid=$!
wait_for "http://127.0.0.1:$gw_port/health" "$gateway_pid" gateway

admin() { # admin PATH JSON: POST to the admin API, print the reply
    curl -fsS -X POST "http://127.0.0.1:$gw_port/admin/v1$1" \
        -H "Authorization: Bearer $admin_token" -H 'Content-Type: application/json' -d "$2"
}
field() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

admin /institutions '{"alias":"bench","name":"Benchmark University"}' >/dev/null
admin /license-types '{"alias":"bench","name":"Benchmark","institution":"bench","default_micro_credits":0}' >/dev/null
license=$(admin /licenses '{"institution":"bench","license_type":"bench","micro_credits":1000000000000000}' | field license_id)
key=$(admin "/licenses/$license/keys" '{}' | field key)

# A first request through each path, so a misconfiguration stops us here.
for body in request.json request-stream.json; do
    code=$(curl -s -o "$tmp/check.out" -w '%{http_code}' "$gw_url/chat/completions" \
        -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
        --data-binary "@$bench/$body")
    [ "$code" = 200 ] || die "gateway answered $code to $body: $(head -c 300 "$tmp/check.out")"
done
gateway_200s=2

# --- 4. measurements ------------------------------------------------------------------------

# Anything else using the CPU skews every figure, so we note how much CPU time went to
# processes other than ours (nginx, the gateway, and this script's children) while we measured.
busy_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
pid_ticks() { # user + system ticks of PIDs that are still running
    local pid
    for pid in "$@"; do awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat" 2>/dev/null || echo 0; done |
        awk '{ s += $1 } END { print s + 0 }'
}
our_ticks() { # sets `ours`: CPU ticks of nginx, the gateway and this script's finished children
    # `times` must run in this shell, not in a $(…) subshell, which has no children of its own.
    times >"$tmp/times.txt"
    local children workers
    children=$(tail -n1 "$tmp/times.txt" | awk -v hz="$(getconf CLK_TCK)" '{
        for (i = 1; i <= 2; i++) { split($i, t, /[ms]/); s += (t[1] * 60 + t[2]) * hz }
        print int(s) }')
    workers=$(cat "/proc/$nginx_pid/task/$nginx_pid/children" 2>/dev/null || true)
    # shellcheck disable=SC2086
    ours=$(($(pid_ticks "$nginx_pid" $workers "$gateway_pid") + children))
}
our_ticks
ours_before=$ours
busy_before=$(busy_ticks)
wall_before=$(date +%s.%N)

wrk_notes=()
kv() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<" $2"; } # kv KEY 'A=1 KEY=2' → 2
# wrk_run NAME THREADS CONNS SECONDS URL BODY: runs wrk, sets r_requests, r_non2xx,
# r_errors, r_rps, r_p50, r_p90, r_p99 (µs)
wrk_run() {
    local name=$1 out=$tmp/wrk-$1.txt line
    say "wrk $name: $3 connection(s), $4 s"
    BENCH_BODY=$bench/$6 BENCH_KEY=$key \
        wrk -t"$2" -c"$3" -d"$4s" --latency -s "$bench/post.lua" "$5/chat/completions" >"$out" 2>&1 ||
        die "wrk $name failed: $(cat "$out")"
    line=$(grep '^BENCH ' "$out") || die "wrk $name: no result line: $(cat "$out")"
    r_requests=$(kv requests "$line") r_non2xx=$(kv non2xx "$line")
    r_errors=$(kv socket_errors "$line") r_p50=$(kv p50_us "$line")
    r_p90=$(kv p90_us "$line") r_p99=$(kv p99_us "$line")
    r_rps=$(awk -v n="$r_requests" -v s="$(kv seconds "$line")" 'BEGIN { printf "%.0f", n / s }')
    if [ "$r_non2xx" -gt 0 ] || [ "$r_errors" -gt 0 ]; then
        wrk_notes+=("wrk $name: $r_non2xx non-2xx responses, $r_errors socket errors ($(grep -E 'Socket errors|Non-2xx' "$out" | tr -s ' ' | paste -sd';'))")
    fi
    if [[ $name == gateway-* ]]; then
        gateway_200s=$((gateway_200s + r_requests - r_non2xx))
    fi
}

# Warm-up: connections, caches, the allocator.
wrk_run direct-warmup 2 32 2 "$up_url" request.json
wrk_run gateway-warmup 2 32 2 "$gw_url" request.json

wrk_run direct-latency 1 1 "$seconds" "$up_url" request.json
d_p50=$r_p50 d_p90=$r_p90 d_p99=$r_p99
wrk_run gateway-latency 1 1 "$seconds" "$gw_url" request.json
g_p50=$r_p50 g_p90=$r_p90 g_p99=$r_p99

wrk_run direct-throughput 2 32 "$seconds" "$up_url" request.json
d_rps=$r_rps
wrk_run gateway-throughput 2 32 "$seconds" "$gw_url" request.json
g_rps=$r_rps

wrk_run direct-stream 2 32 "$seconds" "$up_url" request-stream.json
d_srps=$r_rps
wrk_run gateway-stream 2 32 "$seconds" "$gw_url" request-stream.json
g_srps=$r_rps

# Time to first byte of a stream: 1,000 requests, one after the other, on one connection.
ttfb() { # ttfb NAME URL: prints "p50_us p99_us count_200"
    local out=$tmp/ttfb-$1.txt
    say "curl $1: streaming time to first byte, 1 connection"
    for _ in $(seq 1000); do echo "url = \"$2/chat/completions\""; done >"$tmp/ttfb-urls.txt"
    curl -s -K "$tmp/ttfb-urls.txt" -H "Authorization: Bearer $key" \
        -H 'Content-Type: application/json' --data-binary "@$bench/request-stream.json" \
        -w '%{stderr}%{http_code} %{time_starttransfer}\n' >/dev/null 2>"$out" || true
    awk '$1 == 200 { print $2 * 1e6 }' "$out" | sort -n | awk '
        { v[NR] = $1 }
        END { if (NR == 0) { print "0 0 0"; exit }
              i50 = int(NR * 0.50 + 0.999); i99 = int(NR * 0.99 + 0.999)
              printf "%.0f %.0f %d\n", v[i50], v[i99], NR }'
}
read -r d_ttfb50 d_ttfb99 _ < <(ttfb direct "$up_url")
read -r g_ttfb50 g_ttfb99 g_ttfb_ok < <(ttfb gateway "$gw_url")
gateway_200s=$((gateway_200s + g_ttfb_ok))
[ "$g_ttfb_ok" -eq 1000 ] || wrk_notes+=("curl gateway TTFB: only $g_ttfb_ok of 1000 answered 200")

status_kb() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$gateway_pid/status"; }
peak_kb=$(status_kb VmHWM)

say "holding $streams streams open through the gateway"
hold=$(python3 "$bench/hold.py" "$gw_url/chat/completions" "$bench/request-hold.json" "$key" \
    "$gateway_pid" "$streams")
h_max_open=$(kv max_open "$hold") h_rss_kb=$(kv rss_kb "$hold") h_fds=$(kv fds "$hold")
h_ok=$(kv ok "$hold") h_done=$(kv finished "$hold") h_non200=$(kv non200 "$hold")
h_errors=$(kv errors "$hold") h_seconds=$(kv seconds "$hold")
gateway_200s=$((gateway_200s + h_ok))
if [ "$h_max_open" -lt "$streams" ]; then
    wrk_notes+=("hold: at most $h_max_open of the $streams streams were open at once; the others waited for the gateway to answer, and all $streams took $h_seconds s")
fi
if [ "$h_done" -ne "$streams" ]; then
    wrk_notes+=("hold: $h_done of $streams streams reached [DONE] ($h_ok answered 200, $h_non200 other statuses, $h_errors connection errors)")
fi
final_peak_kb=$(status_kb VmHWM)

# Ledger: batch size from /metrics if this build has it, usage rows from the database.
batch="n/a"
if curl -fsS -o "$tmp/metrics.txt" -H "Authorization: Bearer $admin_token" \
    "http://127.0.0.1:$gw_port/metrics" 2>/dev/null; then
    batch=$(awk '
        $1 == "quantized_ledger_writes_total" { w = $2 }
        $1 == "quantized_ledger_commits_total" { c = $2 }
        $1 == "quantized_ledger_batch_size_sum" { s = $2 }
        $1 == "quantized_ledger_batch_size_count" { n = $2 }
        END { if (c > 0) printf "%.1f writes/commit (%d writes, %d commits)", w / c, w, c
              else if (n > 0) printf "%.1f writes/commit (%d writes, %d commits)", s / n, s, n
              else print "n/a" }' "$tmp/metrics.txt")
fi
sleep 1 # let requests that wrk abandoned at its deadline settle
read -r rows_completed rows_total sums < <(python3 - "$tmp/bench.db" "$license" <<'EOF'
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
one = lambda sql, *args: db.execute(sql, args).fetchone()
completed = one("SELECT COUNT(*) FROM usage WHERE status = 'completed'")[0]
total, charged = one("SELECT COUNT(*), COALESCE(SUM(micro_credits), 0) FROM usage")
entries, = one("SELECT SUM(micro_credits) FROM ledger_entries WHERE license_id = ?", sys.argv[2])
debits, = one("SELECT -COALESCE(SUM(micro_credits), 0) FROM ledger_entries WHERE kind = 'debit'")
used, available = one("SELECT used_micro_credits, available_micro_credits FROM licenses WHERE id = ?", sys.argv[2])
agree = available == entries and used == charged == debits
print(completed, total, "yes" if agree else
      f"NO:balance={available},entries={entries},used={used},usage={charged},debits={debits}")
EOF
)
our_ticks
ours_after=$ours
others=$(awk -v b="$(($(busy_ticks) - busy_before))" -v o="$((ours_after - ours_before))" \
    -v w="$(awk -v a="$wall_before" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')" \
    -v hz="$(getconf CLK_TCK)" -v n="$(nproc)" \
    'BEGIN { x = (b - o) / (w * hz * n) * 100; printf "%.0f %%", x < 0 ? 0 : x }')
gateway_errors=$(grep -cE '^\[[^ ]+ +(ERROR|WARN)' "$tmp/gateway.log" || true)

# --- 5. the table ----------------------------------------------------------------------------

ms() { awk -v u="$1" 'BEGIN { printf "%.3f ms", u / 1000 }'; }
plus_ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.3f ms", (b - a) / 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "× %.2g", b / a }'; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f MB", k / 1024 }'; }
num() { # 12345 → 12,345
    awk -v n="$1" 'BEGIN { s = sprintf("%d", n); r = ""
        while (length(s) > 3) { r = "," substr(s, length(s) - 2) r; s = substr(s, 1, length(s) - 3) }
        print s r }'
}
share=$(awk -v r="$rows_completed" -v n="$gateway_200s" 'BEGIN { printf "%.2f %%", n ? 100 * r / n : 0 }')

cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
echo
echo "Machine: $(nproc) cores, ${cpu:-unknown CPU}, Linux $(uname -r); $(date -u '+%Y-%m-%d %H:%M UTC')."
echo "Each wrk run ${seconds} s; wrk, nginx (1 worker) and the gateway ($(nproc) workers) share the machine;"
echo "Other processes on the machine used $others of its CPU time while this ran."
echo
echo "| metric | direct | gateway | overhead or ratio |"
echo "|---|---:|---:|---:|"
echo "| latency p50, 1 connection | $(ms "$d_p50") | $(ms "$g_p50") | $(plus_ms "$d_p50" "$g_p50") |"
echo "| latency p90, 1 connection | $(ms "$d_p90") | $(ms "$g_p90") | $(plus_ms "$d_p90" "$g_p90") |"
echo "| latency p99, 1 connection | $(ms "$d_p99") | $(ms "$g_p99") | $(plus_ms "$d_p99" "$g_p99") |"
echo "| throughput, 32 connections | $(num "$d_rps") req/s | $(num "$g_rps") req/s | $(ratio "$d_rps" "$g_rps") |"
echo "| stream time to first byte p50, 1 connection | $(ms "$d_ttfb50") | $(ms "$g_ttfb50") | $(plus_ms "$d_ttfb50" "$g_ttfb50") |"
echo "| stream time to first byte p99, 1 connection | $(ms "$d_ttfb99") | $(ms "$g_ttfb99") | $(plus_ms "$d_ttfb99" "$g_ttfb99") |"
echo "| stream throughput, 32 connections | $(num "$d_srps") req/s | $(num "$g_srps") req/s | $(ratio "$d_srps" "$g_srps") |"
echo "| peak RSS (VmHWM) after the wrk runs | | $(mb "$peak_kb") | |"
echo "| RSS with $h_max_open of $streams streams open | | $(mb "$h_rss_kb") ($h_fds fds) | |"
echo "| peak RSS (VmHWM), whole run | | $(mb "$final_peak_kb") | |"
echo "| ledger commit batch size | | $batch | |"
echo "| 200s with a committed usage row | | $(num "$rows_completed") rows / $(num "$gateway_200s") 200s = $share | |"
echo "| balance = Σ ledger entries, used = Σ usage = Σ debits | | $sums | |"
echo
echo "Usage rows: $(num "$rows_total") in all, $(num "$rows_completed") 'completed'. The 200s are those the clients"
echo "counted; wrk abandons up to 32 requests in flight at the end of each run, which the gateway may still"
echo "complete and bill, so the share can exceed 100 %."
if [ ${#wrk_notes[@]} -gt 0 ] || [ "$gateway_errors" -gt 0 ]; then
    echo
    for note in "${wrk_notes[@]}"; do echo "- $note"; done
    [ "$gateway_errors" -eq 0 ] || echo "- the gateway logged $gateway_errors WARN/ERROR lines, e.g.: $(grep -m1 -E '^\[[^ ]+ +(ERROR|WARN)' "$tmp/gateway.log" | cut -c1-200)"
fi
