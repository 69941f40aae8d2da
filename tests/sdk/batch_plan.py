"""What `anthropic_batches.py` and `openai_batches.py` share: reading the
plan, running its steps in order, and printing what happened."""

import json
import sys


def dump(obj):
    """A pydantic model (or anything) as plain JSON data."""
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    return obj


def extra_headers(step):
    """The step's `headers`, plus `x-test-call: <name>`."""
    extra = dict(step.get("headers", {}))
    if step.get("name"):
        extra["x-test-call"] = step["name"]
    return extra


def run_plan(sdk, version, run):
    """Runs `run(step, names)` for each step of the plan on stdin (`names`
    maps step names to the ids they created); prints {"sdk", "version",
    "results"} with, per step, its output or the exception."""
    names = {}
    results = []
    for step in json.load(sys.stdin):
        try:
            out = {"name": step.get("name"), "op": step["op"], **run(step, names), "ok": True}
        except Exception as e:  # noqa: BLE001 - every failure is data here
            out = {"name": step.get("name"), "op": step["op"], "ok": False}
            out["exception"] = type(e).__name__
            out["status_code"] = getattr(e, "status_code", None)
            out["error_message"] = getattr(e, "message", str(e))
            out["body"] = getattr(e, "body", None)
        results.append(out)
    print(json.dumps({"sdk": sdk, "version": version, "results": results}))
