# The official Anthropic SDK through tollgate (base-URL mode): no code change,
# only the base URL. The key the app holds never reaches the provider when
# tollgate has its own (ANTHROPIC_API_KEY in tollgate's environment).
#
#   cargo run --example fake_provider -- --port 9999 &          # or a real key for tollgate
#   TOLLGATE_PROVIDERS__ANTHROPIC__BASE_URL=http://127.0.0.1:9999 cargo run --release -- proxy &
#   pip install anthropic
#   ANTHROPIC_BASE_URL=http://127.0.0.1:8787 ANTHROPIC_API_KEY=unused python examples/base-url/anthropic_sdk.py
import anthropic

client = anthropic.Anthropic()

raw = client.messages.with_raw_response.create(
    model="claude-sonnet-4-5",
    max_tokens=256,
    messages=[{"role": "user", "content": "Say hello"}],
)
message = raw.parse()
print(message.content[0].text)
print("cost USD:", raw.headers.get("x-tollgate-cost-usd"), "request:", raw.headers.get("x-tollgate-request-id"))

with client.messages.stream(
    model="claude-sonnet-4-5",
    max_tokens=256,
    messages=[{"role": "user", "content": "Say hello, streaming"}],
) as stream:
    for text in stream.text_stream:
        print(text, end="", flush=True)
    print()
    print("usage:", stream.get_final_message().usage)
