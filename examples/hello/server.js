// A dependency-free dev server for qai-jobs' walkthrough and tests.
// Accepts the flags of the default dev command (`--hostname H --port P`, also `--port=P`),
// falling back to $PORT, then 3000.
"use strict";
const http = require("node:http");

function option(name, fallback) {
  const args = process.argv.slice(2);
  for (let i = 0; i < args.length; i++) {
    if (args[i] === `--${name}` && i + 1 < args.length) return args[i + 1];
    if (args[i].startsWith(`--${name}=`)) return args[i].slice(name.length + 3);
  }
  return fallback;
}

const port = Number(option("port", process.env.PORT || 3000));
const hostname = option("hostname", process.env.HOSTNAME_BIND || "0.0.0.0");
const startedAt = new Date().toISOString();

const page = `<!doctype html>
<html lang="en">
  <head><meta charset="utf-8"><title>qai-jobs hello</title></head>
  <body>
    <h1>Hello from qai-jobs</h1>
    <p>This preview is served from a qai-jobs workspace (started ${startedAt}).</p>
  </body>
</html>
`;

const server = http.createServer((req, res) => {
  if (req.url === "/healthz") {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end("ok\n");
    return;
  }
  res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
  res.end(page);
});

server.listen(port, hostname, () => {
  console.log(`hello: listening on http://${hostname}:${port}`);
});

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
