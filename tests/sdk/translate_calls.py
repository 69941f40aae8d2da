"""Reads translated answers (tests/fixtures/translate/*/*.out.*, served by
tests/translate_sdk.rs) with an official SDK's own helpers.

Usage: python translate_calls.py < plan.json

The plan is {"sdk": "anthropic" | "openai", "calls": [...]}; each call is
  name    echoed in the result
  file    the fixture the server answers with (`<case>/<file>`, header `x-test-file`)
  status  the HTTP status it answers with (header `x-test-status`, default 200)
  op      create | stream
The base URL comes from ANTHROPIC_BASE_URL / OPENAI_BASE_URL.

Anthropic: `messages.create(...)` or `messages.stream(...).get_final_message()`.
OpenAI: `chat.completions.create(...)` or
`chat.completions.stream(...).get_final_completion()` (the chat stream
accumulator). Prints {"sdk", "version", "results"}: per call the final
message / completion as JSON, or the exception (class, status, message, body).
"""

import json
import sys

TOOL_ANTHROPIC = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}},
}
TOOL_OPENAI = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
    },
}


def dump(obj):
    return obj.model_dump(mode="json") if hasattr(obj, "model_dump") else obj


def failure(e):
    return {
        "ok": False,
        "class": type(e).__name__,
        "status": getattr(e, "status_code", None),
        "message": str(e),
        "body": getattr(e, "body", None),
        "cause": repr(e.__cause__ or e.__context__),
    }


def anthropic_call(client, call):
    headers = {"x-test-file": call["file"], "x-test-status": str(call.get("status", 200))}
    params = dict(
        model="claude-sonnet-5-5",
        max_tokens=256,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[TOOL_ANTHROPIC],
        extra_headers=headers,
    )
    if call["op"] == "stream":
        with client.messages.stream(**params) as stream:
            events = [event.type for event in stream]
            final = stream.get_final_message()
        return {"ok": True, "message": dump(final), "events": events}
    return {"ok": True, "message": dump(client.messages.create(**params))}


def openai_call(client, call):
    headers = {"x-test-file": call["file"], "x-test-status": str(call.get("status", 200))}
    params = dict(
        model="gpt-5.1",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[TOOL_OPENAI],
        extra_headers=headers,
    )
    if call["op"] == "stream":
        with client.chat.completions.stream(
            stream_options={"include_usage": True}, **params
        ) as stream:
            events = [event.type for event in stream]
            final = stream.get_final_completion()
        return {"ok": True, "message": dump(final), "events": events}
    return {"ok": True, "message": dump(client.chat.completions.create(**params))}


def main():
    plan = json.load(sys.stdin)
    if plan["sdk"] == "anthropic":
        import anthropic as sdk

        client = sdk.Anthropic(api_key="sk-test", max_retries=0)
        run = anthropic_call
    else:
        import openai as sdk

        client = sdk.OpenAI(api_key="sk-test", max_retries=0)
        run = openai_call
    results = []
    for call in plan["calls"]:
        try:
            result = run(client, call)
        except Exception as e:  # noqa: BLE001 - every failure is a result to compare
            result = failure(e)
        result["name"] = call["name"]
        results.append(result)
    print(json.dumps({"sdk": plan["sdk"], "version": sdk.__version__, "results": results}))


if __name__ == "__main__":
    main()
