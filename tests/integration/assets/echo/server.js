// A dependency-free test upstream for the gateway: GET /headers answers the request's headers
// as JSON, POST /echo streams the body back, and a WebSocket upgrade (node's 'upgrade' event,
// RFC 6455 framing by hand) echoes every text or binary message.
"use strict";
const http = require("node:http");
const crypto = require("node:crypto");

const portArg = process.argv.indexOf("--port");
const port = Number(portArg > 0 ? process.argv[portArg + 1] : process.env.PORT || 3000);

const server = http.createServer((req, res) => {
  if (req.url === "/headers") {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ headers: req.headers, url: req.url }));
  } else if (req.url === "/echo" && req.method === "POST") {
    res.writeHead(200, { "content-type": "application/octet-stream" });
    req.pipe(res);
  } else if (req.url.startsWith("/big")) {
    const size = Number(new URL(req.url, "http://x").searchParams.get("bytes") || 1048576);
    res.writeHead(200, { "content-type": "application/octet-stream" });
    const chunk = Buffer.alloc(65536, 120);
    let left = size;
    const more = () => {
      while (left > 0) {
        const piece = left >= chunk.length ? chunk : chunk.subarray(0, left);
        left -= piece.length;
        if (!res.write(piece)) return res.once("drain", more);
      }
      res.end();
    };
    more();
  } else {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
    res.end("<!doctype html><title>echo</title><h1>echo upstream</h1>\n");
  }
});

function frame(opcode, payload) {
  const len = payload.length;
  const head = len < 126 ? Buffer.from([0x80 | opcode, len])
    : len < 65536 ? Buffer.from([0x80 | opcode, 126, len >> 8, len & 255])
    : (() => { const b = Buffer.alloc(10); b[0] = 0x80 | opcode; b[1] = 127;
               b.writeBigUInt64BE(BigInt(len), 2); return b; })();
  return Buffer.concat([head, payload]);
}

server.on("upgrade", (req, socket) => {
  const key = req.headers["sec-websocket-key"];
  const accept = crypto.createHash("sha1")
    .update(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest("base64");
  const protocol = (req.headers["sec-websocket-protocol"] || "").split(",")[0].trim();
  socket.write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
    `Sec-WebSocket-Accept: ${accept}\r\n` +
    (protocol ? `Sec-WebSocket-Protocol: ${protocol}\r\n` : "") + "\r\n");
  let buf = Buffer.alloc(0);
  socket.on("data", (data) => {
    buf = Buffer.concat([buf, data]);
    for (;;) {
      if (buf.length < 2) return;
      const opcode = buf[0] & 15;
      const masked = (buf[1] & 128) !== 0;
      let len = buf[1] & 127;
      let off = 2;
      if (len === 126) { if (buf.length < 4) return; len = buf.readUInt16BE(2); off = 4; }
      else if (len === 127) { if (buf.length < 10) return; len = Number(buf.readBigUInt64BE(2)); off = 10; }
      const maskLen = masked ? 4 : 0;
      if (buf.length < off + maskLen + len) return;
      const mask = masked ? buf.subarray(off, off + 4) : null;
      const payload = Buffer.from(buf.subarray(off + maskLen, off + maskLen + len));
      if (mask) for (let i = 0; i < payload.length; i++) payload[i] ^= mask[i % 4];
      buf = buf.subarray(off + maskLen + len);
      if (opcode === 8) { socket.end(frame(8, payload.subarray(0, 2))); return; }
      if (opcode === 9) socket.write(frame(10, payload));
      else if (opcode === 1 || opcode === 2) socket.write(frame(opcode, payload));
    }
  });
  socket.on("error", () => socket.destroy());
});

server.listen(port, "0.0.0.0", () => console.log(`echo: listening on ${port}`));
