"""Drives the official `anthropic` SDK's Message Batches API (`client.messages.batches`).

Usage: python anthropic_batches.py < plan.json

The plan is a JSON list of steps, run in order; each is an object with
  name      echoed in the result (and sent as header `x-test-call`)
  op        create | retrieve | wait | results | cancel | list | delete
  batch     (all but create, list) the `name` of the create step whose batch to use
  requests  (create) a list of {custom_id, prompt?, model?, usage?}; `usage`
            becomes `params.metadata.user_id = "x-fake-usage:<usage>"`
  headers   extra headers (optional object), e.g. the fake's x-fake-batch-ms
  until     (wait) the processing_status to wait for (default "ended");
            timeout (seconds, default 20)
  limit     (list) page size; the result has the first page (its ids and
            results_urls) and every id seen by auto-pagination
The credential is the SDK's default (ANTHROPIC_API_KEY), the base URL
ANTHROPIC_BASE_URL; no retries.

Prints one JSON object {"sdk", "version", "results"}: per step what the SDK
returned (its models dumped as JSON), or the exception (class, status,
message, body).
"""

import time

import anthropic
from batch_plan import dump, extra_headers, run_plan

MODEL = "claude-haiku-4-5-20251001"


def request_of(spec):
    params = {
        "model": spec.get("model", MODEL),
        "max_tokens": 64,
        "messages": [{"role": "user", "content": spec.get("prompt", "Hi")}],
    }
    if spec.get("usage"):
        params["metadata"] = {"user_id": "x-fake-usage:" + spec["usage"]}
    return {"custom_id": spec["custom_id"], "params": params}


def run(client, step, batches):
    extra = extra_headers(step)
    op = step["op"]
    out = {}
    b = client.messages.batches
    batch_id = batches.get(step.get("batch"), step.get("batch"))
    if op == "create":
        batch = b.create(requests=[request_of(r) for r in step["requests"]], extra_headers=extra)
        batches[step["name"]] = batch.id
        out["batch"] = dump(batch)
    elif op == "retrieve":
        out["batch"] = dump(b.retrieve(batch_id, extra_headers=extra))
    elif op == "wait":
        until = step.get("until", "ended")
        deadline = time.monotonic() + step.get("timeout", 20)
        seen = []
        while True:
            batch = b.retrieve(batch_id, extra_headers=extra)
            if not seen or seen[-1] != batch.processing_status:
                seen.append(batch.processing_status)
            if batch.processing_status == until or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        out["seen"] = seen
        out["batch"] = dump(batch)
    elif op == "results":
        out["results"] = [dump(r) for r in b.results(batch_id, extra_headers=extra)]
    elif op == "cancel":
        out["batch"] = dump(b.cancel(batch_id, extra_headers=extra))
    elif op == "list":
        page = b.list(limit=step.get("limit", 20), extra_headers=extra)
        out["first_page"] = {
            "ids": [x.id for x in page.data],
            "has_more": page.has_more,
            "first_id": page.first_id,
            "last_id": page.last_id,
            "results_urls": [x.results_url for x in page.data],
        }
        out["ids"] = [x.id for x in page]
    elif op == "delete":
        out["deleted"] = dump(b.delete(batch_id, extra_headers=extra))
    else:
        raise ValueError(f"unknown op {op!r}")
    return out


def main():
    client = anthropic.Anthropic(max_retries=0)
    run_plan("anthropic", anthropic.__version__, lambda step, names: run(client, step, names))


if __name__ == "__main__":
    main()
