// A Next.js (app router) route handler: `app/api/run/route.ts`. It runs a command in the
// project's sandbox and streams the command's live output to the browser as plain text.
// QAI_API_URL and QAI_API_TOKEN stay on the server; the browser only talks to this route.
import { ActionFailed, ValidationError, WorkspaceClient } from "@qai-jobs/client";

export const runtime = "nodejs"; // the client needs Node's fetch, not the edge runtime
export const dynamic = "force-dynamic";

const qai = new WorkspaceClient({
  baseUrl: process.env["QAI_API_URL"] ?? "http://127.0.0.1:8000",
  token: process.env["QAI_API_TOKEN"],
});

export async function POST(request: Request): Promise<Response> {
  const { projectId, cmd } = (await request.json()) as { projectId: string; cmd: string };
  let action;
  try {
    action = await qai.command(projectId, { cmd, timeout_s: 120 });
  } catch (error) {
    if (error instanceof ValidationError) {
      return Response.json(error.body, { status: 422 }); // nothing was enqueued
    }
    throw error;
  }
  const encoder = new TextEncoder();
  const body = new ReadableStream<Uint8Array>({
    async start(controller) {
      try {
        for await (const ev of action.events({ signal: request.signal })) {
          if (ev.event === "output") controller.enqueue(encoder.encode(ev.data.data));
          if (ev.event === "done") {
            const code = ev.data.result?.["exit_code"] ?? ev.data.error?.code;
            controller.enqueue(encoder.encode(`\n[${ev.data.status}: ${String(code)}]\n`));
          }
        }
        controller.close();
      } catch (error) {
        controller.error(error);
      }
    },
  });
  return new Response(body, { headers: { "content-type": "text/plain; charset=utf-8" } });
}

// GET /api/run?projectId=...: make sure the workspace exists, answer with its preview URL.
export async function GET(request: Request): Promise<Response> {
  const projectId = new URL(request.url).searchParams.get("projectId") ?? "";
  try {
    const ensured = await qai.ensure(projectId, { dev_command: "npm run dev -- --port {port}" });
    const result = await ensured.wait(120_000);
    return Response.json({ previewUrl: result.preview_url, created: result.created });
  } catch (error) {
    if (error instanceof ActionFailed) {
      return Response.json({ error: error.error }, { status: 502 });
    }
    if (error instanceof ValidationError) return Response.json(error.body, { status: 422 });
    throw error;
  }
}
