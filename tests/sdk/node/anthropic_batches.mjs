// Drives the official Node SDK `@anthropic-ai/sdk` Message Batches API
// (`client.messages.batches`), the Node twin of ../anthropic_batches.py.
//
// Usage: node anthropic_batches.mjs < plan.json
//
// The plan is a JSON list of steps, run in order; each is an object with
//   name      echoed in the result (and sent as header `x-test-call`)
//   op        create | retrieve | wait | results | cancel
//   batch     (all but create) the `name` of the create step whose batch to use
//   requests  (create) a list of {custom_id, prompt?, model?, usage?}; `usage`
//             becomes `params.metadata.user_id = "x-fake-usage:<usage>"`
//   headers   extra headers (optional object), e.g. the fake's x-fake-batch-ms
//   until     (wait) the processing_status to wait for (default "ended");
//             timeout (seconds, default 20)
// The credential is the SDK's default (ANTHROPIC_API_KEY), the base URL
// ANTHROPIC_BASE_URL; no retries. `results` reads the batch's results the
// SDK's way: `for await (const r of await client.messages.batches.results(id))`,
// which follows the batch's `results_url`.
//
// Prints one JSON object {"sdk", "version", "results"}: per step what the SDK
// returned, or the exception (class, status, message, body).

import Anthropic from "@anthropic-ai/sdk";
import { VERSION } from "@anthropic-ai/sdk/version";

const MODEL = "claude-haiku-4-5-20251001";

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString("utf8"));
}

function requestOf(spec) {
  const params = {
    model: spec.model ?? MODEL,
    max_tokens: 64,
    messages: [{ role: "user", content: spec.prompt ?? "Hi" }],
  };
  if (spec.usage) params.metadata = { user_id: "x-fake-usage:" + spec.usage };
  return { custom_id: spec.custom_id, params };
}

/** The step's `headers`, plus `x-test-call: <name>`, as request options. */
function optionsOf(step) {
  const headers = { ...(step.headers ?? {}) };
  if (step.name) headers["x-test-call"] = step.name;
  return { headers };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function run(client, step, batches) {
  const options = optionsOf(step);
  const b = client.messages.batches;
  const id = batches[step.batch] ?? step.batch;
  switch (step.op) {
    case "create": {
      const batch = await b.create({ requests: step.requests.map(requestOf) }, options);
      batches[step.name] = batch.id;
      return { batch };
    }
    case "retrieve":
      return { batch: await b.retrieve(id, {}, options) };
    case "wait": {
      const until = step.until ?? "ended";
      const deadline = Date.now() + (step.timeout ?? 20) * 1000;
      const seen = [];
      let batch;
      for (;;) {
        batch = await b.retrieve(id, {}, options);
        if (seen.at(-1) !== batch.processing_status) seen.push(batch.processing_status);
        if (batch.processing_status === until || Date.now() > deadline) break;
        await sleep(20);
      }
      return { seen, batch };
    }
    case "results": {
      const results = [];
      for await (const r of await b.results(id, {}, options)) results.push(r);
      return { results };
    }
    case "cancel":
      return { batch: await b.cancel(id, {}, options) };
    default:
      throw new Error(`unknown op ${JSON.stringify(step.op)}`);
  }
}

async function main() {
  const client = new Anthropic({ maxRetries: 0 });
  const batches = {};
  const results = [];
  for (const step of await readStdin()) {
    const head = { name: step.name ?? null, op: step.op };
    try {
      results.push({ ...head, ...(await run(client, step, batches)), ok: true });
    } catch (e) {
      // Every failure is data here.
      results.push({
        ...head,
        ok: false,
        exception: e?.constructor?.name ?? typeof e,
        status_code: e?.status ?? null,
        error_message: e?.message ?? String(e),
        body: e?.error ?? null,
      });
    }
  }
  process.stdout.write(JSON.stringify({ sdk: "@anthropic-ai/sdk", version: VERSION, results }) + "\n");
}

await main();
