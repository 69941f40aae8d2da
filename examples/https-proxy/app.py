"""An unchanged app: the default base URL, only HTTPS_PROXY and SSL_CERT_FILE set.

    HTTPS_PROXY=http://127.0.0.1:8788 SSL_CERT_FILE=./tollgate-ca/ca.pem python app.py
"""

import anthropic

client = anthropic.Anthropic(api_key="not-needed-tollgate-injects-the-key")
raw = client.messages.with_raw_response.create(
    model="claude-sonnet-4-5",
    max_tokens=64,
    messages=[{"role": "user", "content": "Hello through HTTPS_PROXY"}],
)
message = raw.parse()
print(message.content[0].text)
print("cost:", raw.headers.get("x-tollgate-cost-usd"), "cache:", raw.headers.get("x-tollgate-cache"))
