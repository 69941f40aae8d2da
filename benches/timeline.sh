#!/usr/bin/env bash
# Where a c=1 request's added time goes, from the system calls: bare
# pingora and tollgate (outbox.sync = true), and another tollgate build
# with TOLLGATE_BENCH_BEFORE_BIN, run at once and taken in turns, each
# request cut into the stretches between its system calls, p50 of each.
# The dataplane bench's rows say how much time a proxy adds; this says
# where. See benches/README.md.
#
#   benches/timeline.sh                        # 300 requests each, fake 20 ms away
#   N=500 DELAY_MS=0 WORKLOAD=stream50 benches/timeline.sh
#   TOLLGATE_BENCH_BEFORE_BIN=../before/target/release/tollgate benches/timeline.sh
#
# Needs perf (Debian: apt-get install linux-perf) with the raw_syscalls
# tracepoints, root or perf_event_paranoid ≤ 1, python3, x86-64 (system
# call numbers). Not run by CI.
set -euo pipefail

N=${N:-300}
DELAY_MS=${DELAY_MS:-20}
WORKLOAD=${WORKLOAD:-nonstream}
case $WORKLOAD in nonstream | stream50) ;; *)
    echo "timeline.sh: WORKLOAD is nonstream or stream50" >&2
    exit 2
    ;;
esac

NAME=timeline.sh TOOLS="perf"
# shellcheck source=benches/common.sh
source "$(dirname "$0")/common.sh"

bare_port=$(free_port)
sleep infinity | "$bench" --serve-bare "$bare_port" "127.0.0.1:$fake_port" 2 >"$work/bare.log" 2>&1 &
bare_pid=$!
pids+=("$bare_pid")
wait_port "$bare_port"

# Starts a tollgate binary as NAME: sets PID and PORT.
start_tollgate() {
    local name=$1 bin=$2 port
    port=$(free_port)
    cat >"$work/$name.toml" <<EOF
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:$(free_port)"
data_dir = "$work/$name-data"
threads = 2
default_account = "bench"

[outbox]
sync = true

[cache]
mode = "off"

[providers.anthropic]
base_url = "http://127.0.0.1:$fake_port"
EOF
    env -u RUST_LOG $(env | sed -n 's/^\(TOLLGATE_[A-Z_]*\)=.*/-u \1/p') \
        ANTHROPIC_API_KEY=sk-ant-bench-injected-0000 TOLLGATE_LOG=warn \
        "$bin" proxy --config "$work/$name.toml" >"$work/$name.log" 2>&1 &
    PID=$!
    PORT=$port
    pids+=("$PID")
    wait_port "$port"
}

names=(bare) tpids=("$bare_pid") ports=("$bare_port")
start_tollgate tollgate "$tollgate"
names+=(tollgate) tpids+=("$PID") ports+=("$PORT")
if [ -n "${TOLLGATE_BENCH_BEFORE_BIN:-}" ]; then
    start_tollgate tollgate-before "$TOLLGATE_BENCH_BEFORE_BIN"
    names+=(tollgate-before) tpids+=("$PID") ports+=("$PORT")
fi

# N requests to each port (comma-separated), each on its own kept-alive
# connection, in blocks of 25 per target as the dataplane bench's
# first-byte section takes them (a request then follows its target's
# previous one, not the other targets'), the blocks in the bench's
# balanced orders (every target follows every other equally often). The
# fake answers after DELAY_MS.
drive() {
    python3 - "$1" "$2" "$WORKLOAD" "$DELAY_MS" <<'EOF'
import http.client, sys
ports, n, workload, delay = sys.argv[1].split(","), int(sys.argv[2]), sys.argv[3], sys.argv[4]
stream = workload != "nonstream"
body = ('{"model":"claude-sonnet-4-5-20250929","max_tokens":256,%s"messages":'
        '[{"role":"user","content":"Say hello in one short sentence."}]}'
        % ('"stream":true,' if stream else '')).encode()
headers = {"content-type": "application/json", "anthropic-version": "2023-06-01",
           "x-api-key": "sk-ant-bench-client-0000", "x-fake-ttfb-ms": delay}
if stream:
    headers.update({"x-fake-scenario": "big", "x-fake-big-bytes": "52000"})
conns = [http.client.HTTPConnection("127.0.0.1", int(p)) for p in ports]
block, t = 25, len(conns)
first = [(k + 1) // 2 if k % 2 else (t - k // 2) % t for k in range(t)]
orders = [[(x + r) % t for x in first] for r in range(t)]
if t % 2:
    orders += [o[::-1] for o in orders]
for i in range((n + block - 1) // block):
    for k in orders[i % len(orders)]:
        c = conns[k]
        for _ in range(min(block, n - i * block)):
            c.request("POST", "/v1/messages", body, headers)
            r = c.getresponse()
            r.read()
            if r.status != 200:
                sys.exit(f"answered {r.status}")
EOF
}

# Cuts each request into stretches between system calls (x86-64 numbers).
# The client connection is the one a request is read from, the upstream
# connection the one the proxy then sends on; the journal's pwrite64 and
# fdatasync on the request's thread are the open record's commit. The
# wake is the last epoll_wait return before the upstream read on that
# thread: what follows it is the proxy's own work after the provider
# answered, on a cold CPU when the provider took its time.
analyse() {
    python3 - "$1" "$2" "$3" <<'EOF'
import re, statistics, sys
path, name, pid = sys.argv[1], sys.argv[2], sys.argv[3]
RECV, SEND, WRITEV, PWRITE, FDATASYNC, EPOLL = 45, 44, 20, 18, 75, 232
# Sockets are written with sendto and writev (write(2) is eventfd wakes).
SENDS = (SEND, WRITEV)
line_re = re.compile(r"^\s*(\d+)/(\d+)\s+([\d.]+):\s+raw_syscalls:sys_(enter|exit):\s+NR (\d+) (.*)$")
events = []
for line in open(path, errors="replace"):
    m = line_re.match(line)
    if m and m.group(1) == pid:
        _, tid, t, kind, nr, rest = m.groups()
        events.append((float(t) * 1e6, int(tid), kind, int(nr), rest))
events.sort(key=lambda e: e[0])
entered = {}  # tid -> (nr, fd, t)
calls = []    # (t_enter, t_exit, tid, nr, fd, ret)
for t, tid, kind, nr, rest in events:
    if kind == "enter":
        m = re.match(r"\(([0-9a-f]+)", rest)
        entered[tid] = (nr, int(m.group(1), 16) if m else -1, t)
    else:
        e = entered.pop(tid, None)
        m = re.match(r"= (-?\d+)", rest)
        if e and e[0] == nr and m:
            calls.append((e[2], t, tid, nr, e[1], int(m.group(1))))
calls.sort()
# The client connection: the fd the most requests are read from, at sizes
# a request has (the answers the upstream connection gets are larger).
reads = {}
for c in calls:
    if c[3] == RECV and c[5] > 0:
        reads.setdefault(c[4], []).append(c[5])
if len(reads) < 2:
    sys.exit(f"timeline.sh: {name}: too few reads traced")
client = min(reads, key=lambda fd: statistics.median(reads[fd]))
last_wake = {}
rows, cur = [], None
for te, tx, tid, nr, fd, ret in calls:
    if nr == EPOLL:
        last_wake[tid] = tx
    elif nr == RECV and fd == client and ret > 0:
        if cur and "end" in cur:
            rows.append(cur)
        cur = {"req": tx, "tid": tid}
    elif cur is None:
        continue
    elif nr == PWRITE and tid == cur["tid"] and "up" not in cur and "pw" not in cur:
        cur["pw"] = te
    elif nr == FDATASYNC and tid == cur["tid"] and "pw" in cur and "up" not in cur:
        cur["fs"] = tx
    elif nr in SENDS and fd != client and "up" not in cur:
        cur["up"], cur["upfd"] = te, fd
    elif nr == RECV and "up" in cur and fd == cur["upfd"] and ret > 0 and "uread" not in cur:
        cur["wake"], cur["uread"] = last_wake.get(tid, te), tx
    elif nr in SENDS and fd == client and "uread" in cur:
        cur.setdefault("first", te)
        cur["end"] = te
if cur and "end" in cur:
    rows.append(cur)
rows = rows[len(rows) // 10:]  # the first tenth warms up
def p50(f):
    v = [f(r) for r in rows]
    v = [x for x in v if x is not None]
    return f"{statistics.median(v):7.0f}" if v else "      -"
def span(a, b):
    return lambda r: r[b] - r[a] if a in r and b in r else None
print(f"{name:15s} {len(rows):5d} "
      f"{p50(span('req', 'pw'))} {p50(span('pw', 'fs'))} {p50(span('fs', 'up'))} "
      f"{p50(lambda r: r['up'] - r['req'] if 'pw' not in r else None)} "
      f"{p50(span('wake', 'uread'))} {p50(span('uread', 'first'))} {p50(span('first', 'end'))}")
EOF
}

EV=raw_syscalls:sys_enter,raw_syscalls:sys_exit
echo "system-call timeline, c=1, $WORKLOAD, the fake $DELAY_MS ms away; p50 µs of $N requests each, taken in turns (the first tenth left out)"
echo "tollgate: $tollgate (outbox.sync = true)${TOLLGATE_BENCH_BEFORE_BIN:+; tollgate-before: $TOLLGATE_BENCH_BEFORE_BIN}"
echo "columns: request read → journal write; journal write + fdatasync; fdatasync → upstream send;"
echo "         request read → upstream send (no journal); wake → upstream read returns; → client's first write; → last write"
all_ports=$(IFS=,; echo "${ports[*]}")
all_pids=$(IFS=,; echo "${tpids[*]}")
drive "$all_ports" 30
perf record -q -e "$EV" -p "$all_pids" -o "$work/trace.data" >"$work/perf.log" 2>&1 &
perf_pid=$!
sleep 1
drive "$all_ports" "$N"
kill -INT "$perf_pid"
wait "$perf_pid" || true
perf script -i "$work/trace.data" -F pid,tid,time,event,trace 2>/dev/null >"$work/trace.txt"
printf '%-15s %5s %7s %7s %7s %7s %7s %7s %7s\n' target n 'req→pw' commit 'fs→up' 'req→up' 'wake→rd' 'rd→1st' '1st→end'
for i in "${!names[@]}"; do
    analyse "$work/trace.txt" "${names[$i]}" "${tpids[$i]}"
done
# KEEP=path keeps the decoded trace (perf script output) for a closer look.
if [ -n "${KEEP:-}" ]; then cp "$work/trace.txt" "$KEEP"; fi
