#!/usr/bin/env bash
# Instructions per request: tollgate against bare pingora, counted by
# valgrind's callgrind. Exact and repeatable where the dataplane bench's
# latency rows, on a small VM, move by ±100 µs between processes of one
# binary: a change to the request path shows here as a count. See
# benches/README.md.
#
#   benches/instructions.sh                  # 500 requests per workload
#   N=2000 WORKLOADS=nonstream benches/instructions.sh
#   CACHE=1 benches/instructions.sh          # also cache lines touched
#
# Needs valgrind (Debian: apt-get install valgrind) and python3. Not run by CI.
set -euo pipefail

N=${N:-500}
WORKLOADS=${WORKLOADS:-nonstream stream50}
TARGETS=${TARGETS:-bare tollgate tollgate-nosync}
CACHE=${CACHE:-0}
NAME=instructions.sh TOOLS="valgrind callgrind_control"
# shellcheck source=benches/common.sh
source "$(dirname "$0")/common.sh"

# Starts TARGET under callgrind, instrumentation off: sets PID and PORT
# (valgrind runs the tool in its own process: `$!` is it).
start() {
    local target=$1 port out
    out="$work/$target.callgrind"
    port=$(free_port)
    local vg=(valgrind --tool=callgrind --instr-atstart=no --separate-threads=yes
        "--callgrind-out-file=$out")
    # A last-level cache far smaller than one request's footprint: what a
    # request touches misses there each time, as it does after 20 ms idle.
    if [ "$CACHE" = 1 ]; then
        vg+=(--cache-sim=yes --I1=32768,8,64 --D1=32768,8,64 --LL=65536,8,64)
    fi
    case $target in
    bare)
        sleep infinity | "${vg[@]}" "$bench" --serve-bare "$port" "127.0.0.1:$fake_port" 2 \
            >"$work/$target.log" 2>&1 &
        ;;
    tollgate | tollgate-nosync)
        local sync=true
        [ "$target" = tollgate-nosync ] && sync=false
        cat >"$work/$target.toml" <<EOF
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:$(free_port)"
data_dir = "$work/$target-data"
threads = 2
default_account = "bench"

[outbox]
sync = $sync

[cache]
mode = "off"

[providers.anthropic]
base_url = "http://127.0.0.1:$fake_port"
EOF
        env -u RUST_LOG $(env | sed -n 's/^\(TOLLGATE_[A-Z_]*\)=.*/-u \1/p') \
            ANTHROPIC_API_KEY=sk-ant-bench-injected-0000 TOLLGATE_LOG=warn \
            "${vg[@]}" "$tollgate" proxy --config "$work/$target.toml" \
            >"$work/$target.log" 2>&1 &
        ;;
    *)
        echo "instructions.sh: unknown target $target (bare, tollgate, tollgate-nosync)" >&2
        exit 2
        ;;
    esac
    PID=$!
    PORT=$port
    pids+=("$PID")
    wait_port "$port"
}

# Sequential requests on one kept-alive connection.
drive() {
    python3 - "$1" "$2" "$3" <<'EOF'
import http.client, sys
port, n, workload = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
stream = workload != "nonstream"
body = ('{"model":"claude-sonnet-4-5-20250929","max_tokens":256,%s"messages":'
        '[{"role":"user","content":"Say hello in one short sentence."}]}'
        % ('"stream":true,' if stream else '')).encode()
headers = {"content-type": "application/json", "anthropic-version": "2023-06-01",
           "x-api-key": "sk-ant-bench-client-0000"}
if stream:
    headers.update({"x-fake-scenario": "big", "x-fake-big-bytes": "52000"})
c = http.client.HTTPConnection("127.0.0.1", port)
for _ in range(n):
    c.request("POST", "/v1/messages", body, headers)
    r = c.getresponse()
    r.read()
    if r.status != 200:
        sys.exit(f"answered {r.status}")
EOF
}

# Instructions per request, in thousands: total, then per thread (largest
# first; the request path is the pingora worker threads', the rest is
# background work such as the usage journal's fold). With CACHE=1, then the
# 64-byte lines the threads other than the journal writer's miss in the
# small simulated last-level cache (code and data), per request: the
# request path's footprint.
count() {
    python3 - "$1" "$2" <<'EOF'
import glob, sys
out, n = sys.argv[1], int(sys.argv[2])
per, lines = [], 0
for f in glob.glob(out + "*"):
    events, total, miss, fold = None, 0, 0, False
    for line in open(f, errors="replace"):
        if line.startswith("events:"):
            events = line.split()[1:]
        # "summary:" and "totals:" (an older callgrind writes only one).
        elif line.startswith(("totals:", "summary:")):
            vals = [int(v) for v in line.split()[1:]]
            total = max(total, vals[0] if vals else 0)
            if events and "ILmr" in events:
                at = [events.index(e) for e in ("ILmr", "DLmr", "DLmw")]
                miss = max(miss, sum(vals[i] for i in at if i < len(vals)))
        elif "journal::Writer::fold" in line:
            fold = True
    per.append(total)
    if not fold:
        lines += miss
per = sorted((p for p in per if p), reverse=True)
if not per:
    sys.exit(f"instructions.sh: no callgrind dump at {out}*")
cached = f"   lines: {lines / n:.0f}" if lines else ""
print(f"{sum(per) / n / 1000:8.1f}k   threads: "
      + " ".join(f"{p / n / 1000:.1f}k" for p in per) + cached)
EOF
}

printf '%s\n' "instructions per request (callgrind, user space), $N sequential requests per row"
printf '%s\n' "tollgate: $tollgate"
printf '%-10s %-16s %9s\n' workload target total
for target in $TARGETS; do
    start "$target"
    pid=$PID port=$PORT
    for workload in $WORKLOADS; do
        drive "$port" 50 "$workload"
        rm -f "$work/$target.callgrind"*
        callgrind_control -z "$pid" >/dev/null 2>&1
        callgrind_control -i on "$pid" >/dev/null 2>&1
        drive "$port" "$N" "$workload"
        callgrind_control -i off "$pid" >/dev/null 2>&1
        callgrind_control -d "$pid" >/dev/null 2>&1
        # The dump is written when the process next runs: wait for it.
        for _ in $(seq 300); do
            compgen -G "$work/$target.callgrind.*" >/dev/null && break
            sleep 0.1
        done
        sleep 0.5
        printf '%-10s %-16s %s\n' "$workload" "$target" "$(count "$work/$target.callgrind" "$N")"
    done
    kill "$pid" 2>/dev/null || true
done
