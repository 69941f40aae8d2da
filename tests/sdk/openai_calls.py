"""Drives the official `openai` Python SDK against a base URL (tollgate).

Usage: python openai_calls.py < plan.json

The plan is a JSON list of calls; each is an object with
  name      echoed in the result (and sent as header `x-test-call`)
  op        create | create_stream | stream_helper | models | embeddings |
            responses_create | responses_stream | responses_helper (the
            Responses API: `prompt`, `max_output_tokens`, `store`; model
            default gpt-5)
            (embeddings: `input`, `encoding_format` when given, else the
            SDK's default; the model defaults to text-embedding-3-small)
  scenario  the fake provider's `x-fake-scenario` (optional)
  usage     the fake provider's `x-fake-usage` (optional)
  include_usage  send `stream_options={"include_usage": <this>}` (streams)
  headers   more extra headers (optional object)
  max_retries  (default 0), retry_after (sets `x-fake-retry-after`)
  raises    an exception class name of the SDK; `raised_expected` tells
            whether the exception raised is an instance of it
  base_url  (default: the SDK's own, i.e. OPENAI_BASE_URL)
  model     (default gpt-4o)
The credential is the SDK's default: OPENAI_API_KEY from the environment.

Prints one JSON object whose `results` list holds, per call, what the SDK
observed (completion, chunks, the raw response headers) or the exception.
"""

import json
import sys
import time

import openai

MODEL = "gpt-4o"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
        },
    },
}


def dump(obj):
    if obj is None:
        return None
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    return obj


def headers_of(response):
    return {k.lower(): v for k, v in response.headers.items()}


def params(call, stream=None):
    p = {
        "model": call.get("model", MODEL),
        "messages": [{"role": "user", "content": call.get("prompt", "What is the weather in Paris?")}],
    }
    if call.get("scenario") == "tool_use":
        p["tools"] = [WEATHER_TOOL]
    if stream is not None:
        p["stream"] = stream
    if "include_usage" in call:
        p["stream_options"] = {"include_usage": call["include_usage"]}
    extra = dict(call.get("headers", {}))
    if call.get("name"):
        extra["x-test-call"] = call["name"]
    if call.get("scenario"):
        extra["x-fake-scenario"] = call["scenario"]
    if call.get("usage"):
        extra["x-fake-usage"] = call["usage"]
    if call.get("retry_after"):
        extra["x-fake-retry-after"] = str(call["retry_after"])
    p["extra_headers"] = extra
    return p


def responses_params(call):
    p = {"model": call.get("model", "gpt-5"), "input": call.get("prompt", "Say hello.")}
    for key in ("max_output_tokens", "store", "previous_response_id"):
        if key in call:
            p[key] = call[key]
    p["extra_headers"] = params(call)["extra_headers"]
    return p


def run(client, call):
    op = call["op"]
    out = {"name": call.get("name"), "op": op, "scenario": call.get("scenario")}
    if op == "create":
        raw = client.chat.completions.with_raw_response.create(**params(call))
        out["headers"] = headers_of(raw)
        out["status"] = raw.status_code
        out["completion"] = dump(raw.parse())
    elif op == "create_stream":
        stream = client.chat.completions.create(**params(call, stream=True))
        out["headers"] = headers_of(stream.response)
        chunks = [dump(chunk) for chunk in stream]
        out["chunks"] = chunks
        out["text"] = "".join(
            (c["choices"][0]["delta"].get("content") or "") for c in chunks if c["choices"]
        )
        finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
        out["finish_reason"] = finish[-1] if finish else None
    elif op == "stream_helper":
        p = params(call)
        with client.chat.completions.stream(**p) as stream:
            response = getattr(stream, "_response", None)
            if response is not None:
                out["headers"] = headers_of(response)
            kinds = [event.type for event in stream]
            completion = stream.get_final_completion()
        out["event_types"] = sorted(set(kinds))
        out["completion"] = dump(completion)
    elif op == "embeddings":
        p = {"model": call.get("model", "text-embedding-3-small"), "input": call.get("input", "hello world")}
        if "encoding_format" in call:
            p["encoding_format"] = call["encoding_format"]
        p["extra_headers"] = params(call)["extra_headers"]
        raw = client.embeddings.with_raw_response.create(**p)
        out["headers"] = headers_of(raw)
        out["status"] = raw.status_code
        parsed = raw.parse()
        out["vectors"] = [list(d.embedding) for d in parsed.data]
        out["usage"] = dump(parsed.usage)
        out["model"] = parsed.model
    elif op == "responses_create":
        raw = client.responses.with_raw_response.create(**responses_params(call))
        out["headers"] = headers_of(raw)
        out["status"] = raw.status_code
        out["response"] = dump(raw.parse())
    elif op == "responses_stream":
        stream = client.responses.create(**responses_params(call), stream=True)
        out["headers"] = headers_of(stream.response)
        events = [dump(e) for e in stream]
        out["event_types"] = [e["type"] for e in events]
        out["response"] = events[-1].get("response") if events else None
    elif op == "responses_helper":
        with client.responses.stream(**responses_params(call)) as stream:
            response = getattr(stream, "_response", None)
            if response is not None:
                out["headers"] = headers_of(response)
            kinds = [event.type for event in stream]
            final = stream.get_final_response()
        out["event_types"] = kinds
        out["response"] = dump(final)
        out["text"] = final.output_text
    elif op == "models":
        raw = client.models.with_raw_response.list(extra_headers=params(call)["extra_headers"])
        out["headers"] = headers_of(raw)
        out["status"] = raw.status_code
        out["ids"] = [m.id for m in raw.parse().data]
    else:
        raise ValueError(f"unknown op {op!r}")
    return out


def main():
    plan = json.load(sys.stdin)
    base = openai.OpenAI(timeout=30.0)
    results = []
    for call in plan:
        client = base.with_options(max_retries=call.get("max_retries", 0))
        if call.get("base_url"):
            client = client.with_options(base_url=call["base_url"])
        started = time.monotonic()
        try:
            out = run(client, call)
            out["ok"] = True
        except Exception as e:  # noqa: BLE001 - every failure is data here
            out = {"name": call.get("name"), "op": call["op"], "scenario": call.get("scenario"), "ok": False}
            out["exception"] = type(e).__name__
            if call.get("raises"):
                # By the SDK's name (some are aliases of newer classes; older SDKs
                # do not export every class from the package).
                expected = getattr(openai, call["raises"], None) or getattr(openai._exceptions, call["raises"], None)
                out["raised_expected"] = isinstance(expected, type) and isinstance(e, expected)
            out["status_code"] = getattr(e, "status_code", None)
            out["error_message"] = getattr(e, "message", str(e))
            out["body"] = getattr(e, "body", None)
            response = getattr(e, "response", None)
            if response is not None:
                out["headers"] = headers_of(response)
        out["seconds"] = round(time.monotonic() - started, 3)
        results.append(out)
    print(json.dumps({"sdk": "openai", "version": openai.__version__, "results": results}))


if __name__ == "__main__":
    main()
