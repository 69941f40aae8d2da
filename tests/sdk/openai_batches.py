"""Drives the official `openai` SDK's Files and Batch APIs.

Usage: python openai_batches.py < plan.json

The plan is a JSON list of steps, run in order; each is an object with
  name      echoed in the result (and sent as header `x-test-call`)
  op        upload | create | retrieve | wait | content | cancel | list
            | file | delete_file
  lines     (upload) the JSONL lines, as strings; filename (default in.jsonl)
  file      (create, file, delete_file) the `name` of the upload step
  endpoint  (create) default /v1/chat/completions; metadata (optional)
  batch     (retrieve, wait, content, cancel) the `name` of the create step
  which     (content) output_file_id | error_file_id of the batch as last seen
  headers   extra headers (optional object), e.g. the fake's x-fake-batch-ms
  until     (wait) the statuses to wait for (default the terminal ones);
            timeout (seconds, default 20)
  limit     (list) page size; the result has the first page and every id
            seen by auto-pagination
The credential is the SDK's default (OPENAI_API_KEY), the base URL
OPENAI_BASE_URL; no retries.

Prints one JSON object {"sdk", "version", "results"}: per step what the SDK
returned (its models dumped as JSON; file contents as parsed lines), or the
exception (class, status, message, body).
"""

import json
import time

import openai
from batch_plan import dump, extra_headers, run_plan

TERMINAL = ["completed", "failed", "expired", "cancelled"]


def run(client, step, names, last):
    extra = extra_headers(step)
    op = step["op"]
    out = {}
    batch_id = names.get(step.get("batch"), step.get("batch"))
    file_id = names.get(step.get("file"), step.get("file"))
    if op == "upload":
        data = "\n".join(step["lines"]).encode()
        f = client.files.create(file=(step.get("filename", "in.jsonl"), data), purpose="batch", extra_headers=extra)
        names[step["name"]] = f.id
        out["file"] = dump(f)
    elif op == "create":
        kwargs = {}
        if step.get("metadata"):
            kwargs["metadata"] = step["metadata"]
        batch = client.batches.create(
            input_file_id=file_id,
            endpoint=step.get("endpoint", "/v1/chat/completions"),
            completion_window="24h",
            extra_headers=extra,
            **kwargs,
        )
        names[step["name"]] = batch.id
        last[batch.id] = batch
        out["batch"] = dump(batch)
    elif op == "retrieve":
        batch = client.batches.retrieve(batch_id, extra_headers=extra)
        last[batch.id] = batch
        out["batch"] = dump(batch)
    elif op == "wait":
        until = step.get("until", TERMINAL)
        deadline = time.monotonic() + step.get("timeout", 20)
        seen = []
        while True:
            batch = client.batches.retrieve(batch_id, extra_headers=extra)
            if not seen or seen[-1] != batch.status:
                seen.append(batch.status)
            if batch.status in until or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        last[batch.id] = batch
        out["seen"] = seen
        out["batch"] = dump(batch)
    elif op == "content":
        fid = getattr(last[batch_id], step["which"])
        content = client.files.content(fid, extra_headers=extra)
        out["file_id"] = fid
        out["lines"] = [json.loads(line) for line in content.text.splitlines() if line.strip()]
    elif op == "cancel":
        batch = client.batches.cancel(batch_id, extra_headers=extra)
        last[batch.id] = batch
        out["batch"] = dump(batch)
    elif op == "list":
        page = client.batches.list(limit=step.get("limit", 20), extra_headers=extra)
        out["first_page"] = {"ids": [x.id for x in page.data], "has_more": page.has_more}
        out["ids"] = [x.id for x in page]
    elif op == "file":
        out["file"] = dump(client.files.retrieve(file_id, extra_headers=extra))
    elif op == "delete_file":
        out["deleted"] = dump(client.files.delete(file_id, extra_headers=extra))
    else:
        raise ValueError(f"unknown op {op!r}")
    return out


def main():
    client = openai.OpenAI(max_retries=0)
    last = {}  # per batch id, the batch as last seen (for `content`)
    run_plan("openai", openai.__version__, lambda step, names: run(client, step, names, last))


if __name__ == "__main__":
    main()
