#!/usr/bin/env sh
# curl through the forward proxy: an intercepted provider call (metered,
# receipts) and a blind tunnel to any other site.
set -eu
PROXY=${PROXY:-http://127.0.0.1:8788}
CA=${CA:-./tollgate-ca/ca.pem}

curl -sS -i --proxy "$PROXY" --cacert "$CA" https://api.anthropic.com/v1/messages \
  -H 'anthropic-version: 2023-06-01' -H 'content-type: application/json' \
  -d '{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}'
echo
# Not a provider host: tunnelled byte for byte, its own certificate intact.
curl -sS -o /dev/null -w 'tunnel: %{http_connect} then %{http_code}\n' --proxy "$PROXY" https://example.com/ || true
