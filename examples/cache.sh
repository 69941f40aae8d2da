#!/usr/bin/env sh
# The exact cache through curl: a miss, the same request answered from the
# cache (as JSON, then re-synthesised as a stream), and the opt-outs.
#
#   cargo run --example fake_provider -- --port 9999 &
#   TOLLGATE_PROVIDERS__ANTHROPIC__BASE_URL=http://127.0.0.1:9999 cargo run --release -- proxy &
#   sh examples/cache.sh
set -eu
TOLLGATE=${TOLLGATE:-http://127.0.0.1:8787}
BODY='{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"cache me"}]}'
STREAM='{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"cache me"}]}'

call() { # prints the cache receipt and the cost of one call
  curl -sS -o /dev/null -D - "$TOLLGATE/v1/messages" \
    -H 'anthropic-version: 2023-06-01' -H 'content-type: application/json' "$@" |
    grep -i -E '^x-tollgate-(cache|cost-usd)' | tr -d '\r' | tr '\n' ' '
  echo
}

call -d "$BODY"                                   # miss (or hit, on a second run)
call -d "$BODY"                                   # hit, cost 0.00
curl -sS -N "$TOLLGATE/v1/messages" -H 'anthropic-version: 2023-06-01' \
  -H 'content-type: application/json' -d "$STREAM"   # the same answer as an SSE stream
call -H 'cache-control: no-cache' -d "$BODY"      # refresh: asks the provider, stores the new answer
call -H 'x-tollgate-cache: bypass' -d "$BODY"     # bypass: neither read nor written
cargo run --release -q -- cache stats
