// A Node script on the built package (`npm run build` first): ensure a workspace, run a
// command while printing its live output, read files back, and handle a failed action.
//   QAI_API_URL=http://127.0.0.1:8000 QAI_API_TOKEN=... node examples/demo.mjs [project]
import { ActionFailed, WorkspaceClient } from "../dist/index.js";

const qai = new WorkspaceClient({ baseUrl: process.env.QAI_API_URL, token: process.env.QAI_API_TOKEN });
const project = process.argv[2] ?? "ts-demo";

const ensured = await (
  await qai.ensure(project, {
    files: { "README.md": "# demo\n", "data.bin": new Uint8Array([0, 1, 2, 255]) },
    start_dev_server: false,
  })
).wait(120_000);
console.log(`workspace ${ensured.workspace_id} on ${ensured.provider} (created: ${ensured.created})`);

const run = await qai.command(project, { cmd: "for i in 1 2 3; do echo step $i; sleep 0.2; done" });
for await (const ev of run.events()) {
  if (ev.event === "progress") console.log(`[${ev.data.stage}]`);
  if (ev.event === "output") process.stdout.write(`live> ${ev.data.data}`);
  if (ev.event === "done") console.log(`command ${ev.data.status}, exit ${ev.data.result?.exit_code}`);
}

const read = await (await qai.read(project, { paths: ["README.md", "data.bin"] })).wait(60_000);
for (const file of read.files) console.log(`read ${file.path}: ${file.size} bytes (${file.encoding})`);

try {
  await (await qai.restore(project, { snapshot_id: "does-not-exist" })).wait(60_000);
} catch (error) {
  if (!(error instanceof ActionFailed)) throw error;
  console.log(`restore failed as expected: ${error.error.code}`);
}
