#!/usr/bin/env sh
# tollgate's gateway surface with curl: a chat, the same as a stream, an
# idempotent retry, an alias routed to another provider, a batch submitted
# and read until settled, and the caller's account's usage. No provider headers needed: the body is an Anthropic
# Messages request, `anthropic-version` defaults to 2023-06-01.
#
#   cargo run --example fake_provider -- --port 9999 &
#   ANTHROPIC_API_KEY=fake OPENAI_API_KEY=fake \
#   TOLLGATE_PROVIDERS__ANTHROPIC__BASE_URL=http://127.0.0.1:9999 \
#   TOLLGATE_PROVIDERS__OPENAI__BASE_URL=http://127.0.0.1:9999/v1 \
#     cargo run --release -- proxy --config examples/gateway/tollgate.toml &
#   sh examples/gateway/curl.sh
#
# With gateway keys configured, add -H "x-api-key: $TOLLGATE_KEY" to every
# call (the key decides the account; x-tollgate-account is then optional).
set -eu
TOLLGATE=${TOLLGATE:-http://127.0.0.1:8787}
ACCOUNT=${ACCOUNT:-acme}
BODY='{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}'

echo '# POST /api/v1/llm/chat: one message as JSON, with its receipt headers'
curl -sS -i "$TOLLGATE/api/v1/llm/chat" -H "x-tollgate-account: $ACCOUNT" \
  -H 'x-tollgate-tags: team=search' -d "$BODY"
echo; echo

echo '# POST /api/v1/llm/chat/stream: the same question as SSE (from the exact cache'
echo '# once the first answer is stored), ending with the ": tollgate {...}" receipt'
curl -sS -N "$TOLLGATE/api/v1/llm/chat/stream" -H "x-tollgate-account: $ACCOUNT" -d "$BODY"
echo

echo '# Idempotency-Key: the retry is replayed (x-tollgate-idempotent-replay: true)'
KEY="order-$(date +%s)"
for _ in 1 2; do
  curl -sS -o /dev/null -D - "$TOLLGATE/api/v1/llm/chat" -H "x-tollgate-account: $ACCOUNT" \
    -H "idempotency-key: $KEY" -H 'x-tollgate-cache: bypass' -d "$BODY" |
    grep -i -E '^x-tollgate-(request-id|idempotent-replay)' | tr -d '\r'
done
echo

echo '# A routing alias (examples/gateway/tollgate.toml): served by an OpenAI-dialect'
echo '# target, answered as an Anthropic message'
curl -sS -D - "$TOLLGATE/api/v1/llm/chat" -H "x-tollgate-account: $ACCOUNT" \
  -d '{"model":"smart","max_tokens":64,"messages":[{"role":"user","content":"route me"}]}' |
  grep -i -E '^x-tollgate-(provider|model|attempts)|"type"' | tr -d '\r'
echo

echo '# POST /api/v1/llm/batch: a Message Batches create; the answer is tollgate'"'"'s record'
echo '# (every item'"'"'s worst case reserved at the batch price)'
BATCH='{"requests":[{"custom_id":"q1","params":{"model":"claude-haiku-4-5","max_tokens":64,"messages":[{"role":"user","content":"one"}]}},{"custom_id":"q2","params":{"model":"claude-haiku-4-5","max_tokens":64,"messages":[{"role":"user","content":"two"}]}}]}'
RECORD=$(curl -sS "$TOLLGATE/api/v1/llm/batch" -H "x-tollgate-account: $ACCOUNT" -d "$BATCH")
echo "$RECORD"
ID=$(printf '%s' "$RECORD" | sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
echo
echo "# GET /api/v1/llm/batch/$ID until settled: per item, its result, tokens and cost"
echo '# (a real batch takes minutes to hours; this reads for 20 s at most)'
for _ in $(seq 1 100); do
  STATUS=$(curl -sS "$TOLLGATE/api/v1/llm/batch/$ID" -H "x-tollgate-account: $ACCOUNT")
  case "$STATUS" in *'"status":"settled"'*) break ;; esac
  sleep 0.2
done
echo "$STATUS"
echo

echo '# GET /api/v1/llm/usage: this account only (group_by= or by=)'
sleep 0.2 # events reach the ledger just after their answer
curl -sS "$TOLLGATE/api/v1/llm/usage?group_by=account,model,day,tag" -H "x-tollgate-account: $ACCOUNT"
echo
