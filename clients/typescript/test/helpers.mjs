// Shared by the tests: the API under test (started by tests/integration/test_typescript_client.py,
// or by hand: QAI_API_URL and QAI_API_TOKEN) and a small HTTP proxy that misbehaves on purpose.
import http from "node:http";
import { randomUUID } from "node:crypto";

import { WorkspaceClient } from "../dist/index.js";

export const baseUrl = process.env.QAI_API_URL;
export const token = process.env.QAI_API_TOKEN;
if (!baseUrl) throw new Error("QAI_API_URL must point at a running `qai-jobs api`");

export function client(options = {}) {
  return new WorkspaceClient({ baseUrl, token, backoffInitialMs: 20, ...options });
}

export function projectId(tag) {
  return `ts-${tag}-${randomUUID().slice(0, 8)}`;
}

/**
 * A proxy in front of the API. `decide(request, index)` returns what to do with the index-th
 * request: "forward", "drop-answer" (forward it, let the API act on it, then cut the client's
 * connection without answering), "cut-after-first-event" (for event streams), or
 * `{ status, headers }` to answer itself. Every request is recorded.
 */
export async function proxy(decide) {
  const upstream = new URL(baseUrl);
  const seen = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const index = seen.length;
      seen.push({ method: req.method, url: req.url, headers: req.headers, at: performance.now() });
      const action = decide(req, index);
      if (typeof action === "object") {
        res.writeHead(action.status, { "content-type": "application/json", ...action.headers });
        res.end(JSON.stringify({ error: { code: "proxy", message: `proxy says ${action.status}` } }));
        return;
      }
      const forward = http.request(
        {
          host: upstream.hostname,
          port: upstream.port,
          method: req.method,
          path: req.url,
          headers: { ...req.headers, host: upstream.host },
        },
        (up) => {
          if (action === "drop-answer") {
            up.resume();
            up.on("end", () => req.socket.destroy());
            return;
          }
          res.writeHead(up.statusCode ?? 502, up.headers);
          if (action === "cut-after-first-event") {
            let text = "";
            up.on("data", (chunk) => {
              text += chunk.toString();
              const cut = /\r?\n\r?\n/.test(text);
              res.write(chunk, () => {
                if (cut) req.socket.destroy(); // after the event left, so the client has it
              });
              if (cut) up.destroy();
            });
            return;
          }
          up.pipe(res);
        },
      );
      forward.on("error", () => req.socket.destroy());
      forward.end(Buffer.concat(chunks));
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}`,
    seen,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(resolve);
      }),
  };
}
