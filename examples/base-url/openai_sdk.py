# The official OpenAI SDK through tollgate (base-URL mode). Use
# OPENAI_BASE_URL=http://127.0.0.1:8787/openrouter/v1 for OpenRouter.
#
#   cargo run --example fake_provider -- --port 9999 &
#   TOLLGATE_PROVIDERS__OPENAI__BASE_URL=http://127.0.0.1:9999/v1 cargo run --release -- proxy &
#   pip install openai
#   OPENAI_BASE_URL=http://127.0.0.1:8787/v1 OPENAI_API_KEY=unused python examples/base-url/openai_sdk.py
import openai

client = openai.OpenAI()

raw = client.chat.completions.with_raw_response.create(
    model="gpt-4o",
    messages=[{"role": "user", "content": "Say hello"}],
)
completion = raw.parse()
print(completion.choices[0].message.content)
print("cost USD:", raw.headers.get("x-tollgate-cost-usd"))

# tollgate meters this stream even though the client did not ask for usage,
# and the client still sees no usage chunk.
for chunk in client.chat.completions.create(
    model="gpt-4o",
    messages=[{"role": "user", "content": "Say hello, streaming"}],
    stream=True,
):
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
print()
