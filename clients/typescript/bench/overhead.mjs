// `npm run bench` (or `qai-jobs bench --scenarios events`, which starts the processes):
// against a running API (QAI_API_URL, QAI_API_TOKEN) and worker, measures
//  - SSE first-event latency: enqueue (POST) -> the first `progress` event at the client, p50,
//    beside enqueue -> 202 in the same run;
//  - the client's overhead per call against a raw fetch of the same route (p50), the two
//    interleaved call by call so the host's noise falls on both alike.
// Prints one JSON object.
import { randomUUID } from "node:crypto";

import { WorkspaceClient } from "../dist/index.js";

const baseUrl = process.env.QAI_API_URL;
const token = process.env.QAI_API_TOKEN;
const samples = Number(process.env.QAI_BENCH_SAMPLES ?? 200);
if (!baseUrl) throw new Error("QAI_API_URL must point at a running `qai-jobs api`");

const qai = new WorkspaceClient({ baseUrl, token });
const auth = token ? { authorization: `Bearer ${token}` } : {};
const tag = randomUUID().slice(0, 6);
const projects = Array.from({ length: 8 }, (_, i) => `bench-ts-${tag}-${i}`);

function p50(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor((sorted.length - 1) / 2)];
}
const round = (v) => Math.round(v * 1000) / 1000;

async function rawGet(path) {
  const res = await fetch(baseUrl + path, { headers: { accept: "application/json", ...auth } });
  const body = await res.json();
  if (!res.ok) throw new Error(`GET ${path}: ${res.status}`);
  return body;
}

async function rawPost(path, body) {
  const res = await fetch(baseUrl + path, {
    method: "POST",
    headers: { "content-type": "application/json", "idempotency-key": randomUUID(), ...auth },
    body: JSON.stringify(body),
  });
  const answer = await res.json();
  if (res.status !== 202) throw new Error(`POST ${path}: ${res.status}`);
  return answer;
}

// Provision the projects first: a first action also creates the workspace.
await Promise.all(projects.map(async (p) => (await qai.ensure(p, { start_dev_server: false })).wait(60_000)));
const known = (await qai.command(projects[0], { cmd: "true" })).id;
await qai.action(known).wait(60_000);

// Warm both paths (connections, JIT).
for (let i = 0; i < 20; i++) {
  await qai.getAction(known);
  await rawGet(`/v1/actions/${known}`);
}

const clientGet = [];
const rawGetTimes = [];
const clientPost = [];
const rawPostTimes = [];
async function timed(into, call) {
  const t = performance.now();
  await call();
  into.push(performance.now() - t);
}
// Which of the pair goes first alternates, so neither always meets the worker busy with the
// action the other just enqueued.
for (let i = 0; i < samples; i++) {
  const project = projects[i % projects.length];
  const gets = [
    () => timed(clientGet, () => qai.getAction(known)),
    () => timed(rawGetTimes, () => rawGet(`/v1/actions/${known}`)),
  ];
  const posts = [
    () => timed(clientPost, () => qai.command(project, { cmd: "true" })),
    () =>
      timed(rawPostTimes, () =>
        rawPost(`/v1/projects/${project}/actions`, { kind: "command", cmd: "true" }),
      ),
  ];
  if (i % 2) {
    gets.reverse();
    posts.reverse();
  }
  for (const call of [...gets, ...posts]) await call();
}

// Let the worker catch up before timing events.
await (await qai.command(projects.at(-1), { cmd: "true" })).wait(120_000);
for (const p of projects) await (await qai.command(p, { cmd: "true" })).wait(120_000);

const firstProgress = [];
const accepted = [];
const eventSamples = Math.max(20, Math.floor(samples / 2));
for (let i = 0; i < eventSamples; i++) {
  const project = projects[i % projects.length];
  const t0 = performance.now();
  const action = await qai.command(project, { cmd: "true" });
  accepted.push(performance.now() - t0);
  for await (const ev of action.events()) {
    if (ev.event === "progress" && firstProgress.length === i) firstProgress.push(performance.now() - t0);
    if (ev.event === "done") break;
  }
  if (firstProgress.length === i) firstProgress.push(Number.NaN); // no progress event at all
}

const getClient = p50(clientGet);
const getRaw = p50(rawGetTimes);
const postClient = p50(clientPost);
const postRaw = p50(rawPostTimes);
console.log(
  JSON.stringify({
    samples,
    get_action: {
      client_p50_ms: round(getClient),
      raw_fetch_p50_ms: round(getRaw),
      overhead_p50_ms: round(getClient - getRaw),
      ratio: round(getClient / getRaw),
    },
    enqueue: {
      client_p50_ms: round(postClient),
      raw_fetch_p50_ms: round(postRaw),
      overhead_p50_ms: round(postClient - postRaw),
      ratio: round(postClient / postRaw),
    },
    events: {
      samples: eventSamples,
      enqueue_to_first_progress_p50_ms: round(p50(firstProgress.filter((v) => !Number.isNaN(v)))),
      enqueue_to_202_p50_ms: round(p50(accepted)),
      missing_progress: firstProgress.filter((v) => Number.isNaN(v)).length,
    },
  }),
);
