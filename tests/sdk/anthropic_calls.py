"""Drives the official `anthropic` Python SDK against a base URL (tollgate).

Usage: python anthropic_calls.py < plan.json

The plan is a JSON list of calls; each is an object with
  name      echoed in the result (and sent as header `x-test-call`)
  op        create | create_stream | stream_helper | count_tokens | beta_create
            | models
  scenario  the fake provider's `x-fake-scenario` (optional)
  usage     the fake provider's `x-fake-usage` (optional)
  headers   more extra headers (optional object)
  max_retries  (default 0), retry_after (sets `x-fake-retry-after`)
  raises    an exception class name of the SDK; `raised_expected` tells
            whether the exception raised is an instance of it
  base_url  (default: the SDK's own, i.e. ANTHROPIC_BASE_URL)
  betas     `betas=` of beta_create (optional list)
The credential is the SDK's default: ANTHROPIC_API_KEY from the environment.

Prints one JSON object {"sdk", "version", "results"}: per call what the SDK
observed (the parsed message, event types, text, usage, the raw response
headers), or the exception (class, status, message, body, headers).
"""

import json
import sys
import time

import anthropic

MODEL = "claude-sonnet-4-5"
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {
        "type": "object",
        "properties": {"location": {"type": "string"}},
        "required": ["location"],
    },
}


def dump(obj):
    """A pydantic model (or anything) as plain JSON data."""
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
        "max_tokens": 256,
        "messages": [{"role": "user", "content": call.get("prompt", "What is the weather in Paris?")}],
    }
    if call.get("scenario") == "tool_use":
        p["tools"] = [WEATHER_TOOL]
    if call.get("scenario") == "thinking":
        p["thinking"] = {"type": "enabled", "budget_tokens": 1024}
        p["max_tokens"] = 2048
    if stream is not None:
        p["stream"] = stream
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


def run(client, call):
    op = call["op"]
    out = {"name": call.get("name"), "op": op, "scenario": call.get("scenario")}
    if op == "create":
        raw = client.messages.with_raw_response.create(**params(call))
        out["headers"] = headers_of(raw)
        out["status"] = raw.status_code
        out["message"] = dump(raw.parse())
    elif op == "beta_create":
        p = params(call)
        if call.get("betas"):
            p["betas"] = call["betas"]
        raw = client.beta.messages.with_raw_response.create(**p)
        out["headers"] = headers_of(raw)
        out["status"] = raw.status_code
        out["message"] = dump(raw.parse())
    elif op == "create_stream":
        stream = client.messages.create(**params(call, stream=True))
        out["headers"] = headers_of(stream.response)
        events, text, usage, stop_reason, tool_json = [], "", None, None, ""
        for event in stream:
            events.append(event.type)
            if event.type == "message_start":
                usage = dump(event.message.usage)
            elif event.type == "content_block_delta":
                if event.delta.type == "text_delta":
                    text += event.delta.text
                elif event.delta.type == "input_json_delta":
                    tool_json += event.delta.partial_json
            elif event.type == "message_delta":
                stop_reason = event.delta.stop_reason
                # Cumulative: overwrite what message_delta carries.
                for k, v in dump(event.usage).items():
                    if v is not None:
                        usage[k] = v
        out["events"] = events
        out["text"] = text
        out["tool_json"] = tool_json
        out["usage"] = usage
        out["stop_reason"] = stop_reason
    elif op == "stream_helper":
        texts = []
        with client.messages.stream(**params(call)) as stream:
            out["headers"] = headers_of(stream.response)
            for text in stream.text_stream:
                texts.append(text)
            message = stream.get_final_message()
        out["text"] = "".join(texts)
        out["message"] = dump(message)
    elif op == "count_tokens":
        p = params(call)
        p.pop("max_tokens")
        if hasattr(client.messages, "count_tokens"):
            raw = client.messages.with_raw_response.count_tokens(**p)
            out["api"] = "messages.count_tokens"
        else:
            # Older SDKs only have the beta endpoint (`?beta=true`).
            raw = client.beta.messages.with_raw_response.count_tokens(
                betas=["token-counting-2024-11-01"], **p
            )
            out["api"] = "beta.messages.count_tokens"
        out["headers"] = headers_of(raw)
        out["status"] = raw.status_code
        out["message"] = dump(raw.parse())
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
    base = anthropic.Anthropic(timeout=30.0)
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
                expected = getattr(anthropic, call["raises"], None) or getattr(anthropic._exceptions, call["raises"], None)
                out["raised_expected"] = isinstance(expected, type) and isinstance(e, expected)
            out["status_code"] = getattr(e, "status_code", None)
            out["error_message"] = getattr(e, "message", str(e))
            out["body"] = getattr(e, "body", None)
            response = getattr(e, "response", None)
            if response is not None:
                out["headers"] = headers_of(response)
        out["seconds"] = round(time.monotonic() - started, 3)
        results.append(out)
    print(json.dumps({"sdk": "anthropic", "version": anthropic.__version__, "results": results}))


if __name__ == "__main__":
    main()
