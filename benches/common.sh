# Shared by instructions.sh and timeline.sh (sourced, not run): builds the
# dataplane bench, whose binary serves the fake provider and bare pingora,
# finds the tollgate binary, makes a work directory cleaned up on exit and
# starts the fake. The caller sets NAME (its own, for messages) and TOOLS
# (commands it needs) first. Sets bench, tollgate, work, pids, fake_port.

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/bench}
cd "$(dirname "${BASH_SOURCE[0]}")/.."

for tool in $TOOLS python3; do
    command -v "$tool" >/dev/null || { echo "$NAME: needs $tool on PATH" >&2; exit 2; }
done

# (cargo's progress and any compile error go to stderr as usual.)
bench=$(cargo bench --bench dataplane --no-run --message-format=json-render-diagnostics |
    python3 -c 'import sys, json
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "dataplane" and m.get("executable"):
        print(m["executable"])')
tollgate=${TOLLGATE_BENCH_BIN:-$CARGO_TARGET_DIR/release/tollgate}
[ -x "$bench" ] && [ -x "$tollgate" ] || { echo "$NAME: build failed" >&2; exit 1; }

work=$(mktemp -d "/tmp/tollgate-${NAME%.sh}.XXXXXX")
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    # The sleepers holding the children's stdin open.
    pkill -P $$ 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 600); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "$NAME: nothing listens on $1; the logs:" >&2
    tail -n 20 "$work"/*.log >&2
    exit 1
}

# The children exit when their stdin closes: hold it open with a sleeper.
fake_port=$(free_port)
sleep infinity | "$bench" --serve-fake "$fake_port" 1 >"$work/fake.log" 2>&1 &
pids+=($!)
wait_port "$fake_port"
