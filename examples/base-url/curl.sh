#!/usr/bin/env sh
# curl through tollgate (base-URL mode): one Anthropic call, one OpenAI stream.
#
#   cargo run --example fake_provider -- --port 9999 &
#   TOLLGATE_PROVIDERS__ANTHROPIC__BASE_URL=http://127.0.0.1:9999 \
#   TOLLGATE_PROVIDERS__OPENAI__BASE_URL=http://127.0.0.1:9999/v1 cargo run --release -- proxy &
#   sh examples/base-url/curl.sh
set -eu
TOLLGATE=${TOLLGATE:-http://127.0.0.1:8787}

curl -sS -i "$TOLLGATE/v1/messages" \
  -H 'anthropic-version: 2023-06-01' -H 'content-type: application/json' \
  -d '{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}'
echo

curl -sS -N "$TOLLGATE/v1/chat/completions" -H 'content-type: application/json' \
  -d '{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}'
