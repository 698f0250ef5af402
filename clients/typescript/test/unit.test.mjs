// The pieces that need no API: the event-stream parser, file encoding, Retry-After.
import assert from "node:assert/strict";
import { test } from "node:test";

import { parseEventStream } from "../dist/sse.js";
import { encodeFiles, fileBytes } from "../dist/files.js";
import { retryAfterMs } from "../dist/transport.js";

async function parse(...chunks) {
  async function* body() {
    for (const chunk of chunks) yield new TextEncoder().encode(chunk);
  }
  const out = [];
  for await (const message of parseEventStream(body())) out.push(message);
  return out;
}

test("the event-stream format: fields, comments, multi-line data, any line ending", async () => {
  const events = await parse(
    ": heartbeat\r\n",
    "id: 1\r\nevent: progress\r\nretry: 1000\r\ndata: {\"stage\":\"running\"}\r\n\r\n",
    "id: 2\nevent: output\ndata: line one\ndata:line two\n\n",
    "data: no event name\rid: 3\r\r",
    "event: done\nid\ndata: {}\n\nevent: ignored-without-data\n\n",
  );
  assert.deepEqual(events, [
    { event: "progress", data: '{"stage":"running"}', id: "1", retry: 1000 },
    { event: "output", data: "line one\nline two", id: "2", retry: undefined },
    { event: "message", data: "no event name", id: "3", retry: undefined },
    { event: "done", data: "{}", id: "", retry: undefined },
  ]);
});

test("a CRLF and a character split across chunks still parse", async () => {
  const euro = new TextEncoder().encode("data: €\r\n\r\n");
  async function* body() {
    yield euro.slice(0, 7); // splits the three bytes of the euro sign
    yield euro.slice(7, 10); // ends on the CR of a CRLF
    yield euro.slice(10);
  }
  const out = [];
  for await (const m of parseEventStream(body())) out.push(m);
  assert.deepEqual(out.map((m) => m.data), ["€"]);
  const split = await parse("event: a\r", "\ndata: x\r", "\n\r", "\n");
  assert.deepEqual(split.map((m) => [m.event, m.data]), [["a", "x"]]);
});

test("files: strings stay a mapping; bytes go base64 and come back", () => {
  assert.deepEqual(encodeFiles({ "a.txt": "hi" }), { "a.txt": "hi" });
  const bytes = new Uint8Array([0, 255, 10]);
  assert.deepEqual(encodeFiles({ "a.txt": "hi", "b.bin": bytes }), [
    { path: "a.txt", content: "hi", encoding: "utf-8" },
    { path: "b.bin", content: "AP8K", encoding: "base64" },
  ]);
  const view = new Uint8Array(new Uint8Array([9, 0, 255, 10, 9]).buffer, 1, 3);
  assert.deepEqual(encodeFiles([{ path: "v.bin", content: view }]), [
    { path: "v.bin", content: "AP8K", encoding: "base64" },
  ]);
  assert.deepEqual(fileBytes({ content: "AP8K", encoding: "base64" }), bytes);
  assert.deepEqual(fileBytes({ content: "é", encoding: "utf-8" }), new Uint8Array([0xc3, 0xa9]));
});

test("Retry-After: seconds or an HTTP date, capped", () => {
  assert.equal(retryAfterMs("2"), 2000);
  assert.equal(retryAfterMs("0"), 0);
  assert.equal(retryAfterMs(null), undefined);
  assert.equal(retryAfterMs("soon"), undefined);
  assert.equal(retryAfterMs("100000"), 30_000);
  const inTwo = new Date(Date.now() + 2000).toUTCString();
  const ms = retryAfterMs(inTwo);
  assert.ok(ms > 500 && ms <= 2000, String(ms));
});
