// @qai-jobs/client against a real `qai-jobs api` and worker (local provider, real sandboxes).
import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { test } from "node:test";

import {
  ActionFailed,
  ActionTimeoutError,
  AuthError,
  ConflictError,
  NotFoundError,
  QaiJobsError,
  ValidationError,
  WorkspaceClient,
  fileBytes,
} from "../dist/index.js";
import { baseUrl, client, projectId, proxy } from "./helpers.mjs";

const WAIT = 120_000; // hang guard only

test("ensure, a command's live output through events(), read files back", async () => {
  const qai = client();
  const project = projectId("live");
  const binary = new Uint8Array([0, 1, 2, 250, 255]);
  const ensured = await (
    await qai.ensure(project, {
      files: { "hello.txt": "hi from ts\n", "data/blob.bin": binary },
      start_dev_server: false,
    })
  ).wait(WAIT);
  assert.equal(ensured.created, true);
  assert.equal(ensured.files_written, 2);

  const action = await qai.command(project, {
    cmd: "for i in 1 2 3; do echo line-$i; sleep 0.4; done; echo oops >&2",
  });
  const outputs = [];
  let done;
  for await (const ev of action.events()) {
    if (ev.event === "output") {
      process.stdout.write(`# live ${ev.data.stream}: ${ev.data.data}`);
      outputs.push({ at: performance.now(), ...ev.data });
    } else if (ev.event === "done") {
      done = ev.data;
    }
  }
  assert.ok(done, "the stream ends with done");
  assert.equal(done.status, "succeeded");
  assert.equal(done.result.stdout, "line-1\nline-2\nline-3\n");
  assert.equal(done.result.stderr, "oops\n");
  const stdout = outputs.filter((o) => o.stream === "stdout");
  assert.ok(stdout.length >= 2, `output came in pieces, as it happened: ${JSON.stringify(stdout)}`);
  assert.ok(stdout.at(-1).at - stdout[0].at >= 500, "pieces arrived over time, not at the end");
  assert.equal(stdout.map((o) => o.data).join(""), "line-1\nline-2\nline-3\n");
  assert.deepEqual(await action.wait(WAIT), done.result);

  const read = await (
    await qai.read(project, { paths: ["hello.txt", "data/blob.bin", "nope.txt"] })
  ).wait(WAIT);
  const byPath = Object.fromEntries(read.files.map((f) => [f.path, f]));
  assert.equal(byPath["hello.txt"].content, "hi from ts\n");
  assert.equal(byPath["data/blob.bin"].encoding, "base64");
  assert.deepEqual(fileBytes(byPath["data/blob.bin"]), binary);
  assert.deepEqual(read.missing, ["nope.txt"]);
});

test("a failed action rejects with ActionFailed carrying its error", async () => {
  const qai = client();
  const project = projectId("fail");
  const restore = await qai.restore(project, { snapshot_id: "no-such-snapshot" });
  await assert.rejects(restore.wait(WAIT), (error) => {
    assert.ok(error instanceof ActionFailed && error instanceof QaiJobsError);
    assert.equal(typeof error.error.code, "string");
    assert.equal(typeof error.error.message, "string");
    assert.equal(error.action.status, "failed");
    return true;
  });
  const events = [];
  for await (const ev of restore.events()) events.push(ev.event);
  assert.deepEqual(events, ["done"], "a finished action answers done at once");
  // A non-zero exit is a successful command: the result says what happened.
  const failing = await (await qai.command(project, { cmd: "exit 3" })).wait(WAIT);
  assert.equal(failing.exit_code, 3);
});

test("a 422 rejects with ValidationError and enqueues nothing", async () => {
  const qai = client();
  const project = projectId("invalid");
  await assert.rejects(qai.write(project, { files: { "../escape": "x" } }), (error) => {
    assert.ok(error instanceof ValidationError);
    assert.equal(error.status, 422);
    assert.equal(error.body.error.code, "invalid_request");
    assert.match(error.field, /^files/);
    return true;
  });
  await assert.rejects(qai.command(project, { cmd: "true", timeout_s: -1 }), ValidationError);
  assert.deepEqual(await qai.listActions(project), []);
  await assert.rejects(qai.getWorkspace(project), NotFoundError);
});

test("a wrong token rejects with AuthError", async () => {
  const bad = new WorkspaceClient({ baseUrl, token: "not-the-token" });
  await assert.rejects(bad.ensure(projectId("auth")), (error) => {
    assert.ok(error instanceof AuthError);
    assert.equal(error.status, 401);
    return true;
  });
  await assert.rejects(async () => {
    for await (const _ of bad.action("00000000-0000-4000-8000-000000000000").events()) break;
  }, AuthError);
});

test("a lost answer is retried under the same idempotency key: one action", async () => {
  const dropFirstPost = (req, index) =>
    req.method === "POST" && index === 0 ? "drop-answer" : "forward";
  const flaky = await proxy(dropFirstPost);
  try {
    const qai = client({ baseUrl: flaky.url });
    const project = projectId("retry");
    const action = await qai.command(project, { cmd: "echo once" });
    const posts = flaky.seen.filter((r) => r.method === "POST");
    assert.equal(posts.length, 2, "the first answer was lost, so the client sent it again");
    const keys = new Set(posts.map((r) => r.headers["idempotency-key"]));
    assert.equal(keys.size, 1);
    assert.ok([...keys][0]);
    assert.equal((await action.wait(WAIT)).stdout, "once\n");
    const actions = await client().listActions(project);
    assert.equal(actions.length, 1, "the retry did not enqueue twice");
    assert.equal(actions[0].id, action.id);
  } finally {
    await flaky.close();
  }
});

test("429 waits as Retry-After says, 503 is retried, under one key", async () => {
  const answers = [{ status: 429, headers: { "retry-after": "1" } }, { status: 503 }];
  const busy = await proxy((_req, index) => answers[index] ?? "forward");
  try {
    const qai = client({ baseUrl: busy.url });
    const project = projectId("busy");
    const action = await qai.ensure(project, { start_dev_server: false }, { idempotencyKey: `k-${project}` });
    assert.equal(busy.seen.length, 3);
    assert.ok(busy.seen[1].at - busy.seen[0].at >= 900, "waited the second Retry-After asked for");
    assert.deepEqual(new Set(busy.seen.map((r) => r.headers["idempotency-key"])), new Set([`k-${project}`]));
    await action.wait(WAIT);
    // The same key again is the same action.
    const again = await client().ensure(project, { start_dev_server: false }, { idempotencyKey: `k-${project}` });
    assert.equal(again.id, action.id);
    assert.equal((await client().listActions(project)).length, 1);
  } finally {
    await busy.close();
  }
});

test("events() resumes with Last-Event-ID after the connection drops, and still ends", async () => {
  const cut = await proxy((req) =>
    req.url.endsWith("/events") && !req.headers["last-event-id"] ? "cut-after-first-event" : "forward",
  );
  try {
    const qai = client({ baseUrl: cut.url });
    const project = projectId("resume");
    await (await client().ensure(project, { start_dev_server: false })).wait(WAIT);
    const action = await qai.command(project, { cmd: "sleep 1; echo after" });
    const seen = [];
    for await (const ev of action.events()) seen.push(ev);
    const streams = cut.seen.filter((r) => r.url.endsWith("/events"));
    assert.ok(streams.length >= 2, "it reconnected");
    assert.equal(streams[1].headers["last-event-id"], seen[0].id);
    assert.equal(seen.at(-1).event, "done");
    assert.equal(seen.at(-1).data.result.stdout, "after\n");
    const ids = seen.map((e) => Number(e.id));
    assert.deepEqual(ids, [...ids].sort((a, b) => a - b));
  } finally {
    await cut.close();
  }
});

test("wait(timeoutMs) rejects with ActionTimeoutError; cancel, conflicts and inspection", async () => {
  const qai = client();
  const project = projectId("cancel");
  await (await qai.ensure(project, { start_dev_server: false })).wait(WAIT);
  const slow = await qai.command(project, { cmd: "sleep 1.5" });
  const queued = await qai.command(project, { cmd: "echo never" });
  const started = performance.now();
  await assert.rejects(slow.wait(300), (error) => {
    assert.ok(error instanceof ActionTimeoutError);
    assert.match(error.message, /still (queued|running) after 300 ms/);
    return true;
  });
  assert.ok(performance.now() - started < 1400);
  assert.equal((await qai.cancel(queued.id)).status, "cancelled");
  await assert.rejects(queued.wait(WAIT), (error) => error instanceof ActionFailed && error.error.code === "cancelled");
  await assert.rejects(qai.cancel(queued.id), ConflictError);
  assert.equal((await slow.wait(WAIT)).exit_code, 0);
  assert.equal((await qai.getAction(slow.id)).status, "succeeded");
  await assert.rejects(qai.getAction("00000000-0000-4000-8000-000000000000"), NotFoundError);
  const statuses = (await qai.listActions(project)).map((a) => [a.kind, a.status]);
  assert.deepEqual(statuses, [
    ["ensure", "succeeded"],
    ["command", "succeeded"],
    ["command", "cancelled"],
  ]);
  assert.equal((await qai.listActions(project, { status: "cancelled" })).length, 1);
});

test("every kind on a real dev server: preview answers, sleep/wake, snapshot/restore, destroy", async () => {
  const qai = client();
  const project = projectId("kinds");
  const dir = new URL("../../../examples/hello/", import.meta.url);
  const files = Object.fromEntries(
    readdirSync(dir, { withFileTypes: true })
      .filter((e) => e.isFile())
      .map((e) => [e.name, readFileSync(new URL(e.name, dir), "utf8")]),
  );
  const ensured = await (await qai.ensure(project, { files })).wait(WAIT);
  assert.ok(ensured.preview_url);
  const page = await fetch(ensured.preview_url);
  assert.equal(page.status, 200);
  assert.match(await page.text(), /Hello from qai-jobs/);
  const preview = await (await qai.preview(project)).wait(WAIT);
  assert.equal(preview.healthy, true);
  assert.equal(typeof (await (await qai.logs(project, { tail: 20 })).wait(WAIT)).text, "string");
  const { snapshot_id } = await (await qai.snapshot(project)).wait(WAIT);
  assert.ok(snapshot_id);
  await (await qai.write(project, { files: { "later.txt": "after the snapshot" } })).wait(WAIT);
  await (await qai.sleep(project)).wait(WAIT);
  assert.equal((await qai.getWorkspace(project)).status, "sleeping");
  const woken = await (await qai.wake(project)).wait(WAIT);
  assert.ok(woken.preview_url);
  await (await qai.restore(project, { snapshot_id })).wait(WAIT);
  const after = await (await qai.read(project, { paths: ["later.txt"] })).wait(WAIT);
  assert.deepEqual(after.missing, ["later.txt"], "restore brought back the snapshot's files");
  const workspace = await qai.getWorkspace(project);
  assert.equal(workspace.project_id, project);
  assert.equal(workspace.provider, "local");
  await (await qai.destroy(project)).wait(WAIT);
  assert.equal((await qai.getWorkspace(project)).status, "destroyed");
});
