"""A git server over HTTPS with basic auth, on 127.0.0.1: ``git http-backend`` (smart HTTP,
so shallow fetches work) behind a TLS listener with a throwaway self-signed certificate.

Requests without the right ``Authorization`` get 401 and a ``WWW-Authenticate`` challenge, as
a private repository on a forge does; ``authorizations`` keeps every header that was sent.
"""

from __future__ import annotations

import base64
import os
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class GitHttps:
    def __init__(self, tmp: Path, user: str, password: str) -> None:
        self.tmp, self.user, self.password = tmp, user, password
        self.root = tmp / "served"
        self.root.mkdir(parents=True)
        self.authorizations: list[str] = []
        cert, key = tmp / "cert.pem", tmp / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True,
        )  # fmt: skip
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def repo(self, name: str, files: dict[str, str]) -> str:
        """A bare repository served as ``name``, one commit of ``files`` on main; its HEAD."""
        work = self.tmp / f"work-{name}"
        work.mkdir()
        for path, content in files.items():
            (work / path).write_text(content)
        env = {**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}
        ident = ["-c", "user.name=t", "-c", "user.email=t@example.com"]
        for args in (["init", "-q", "-b", "main"], ["add", "."], [*ident, "commit", "-qm", "one"]):
            subprocess.run(["git", *args], cwd=work, env=env, check=True)
        bare = self.root / name
        subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], env=env, check=True)
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=work, env=env, check=True, capture_output=True
        )
        return head.stdout.decode().strip()

    def url(self, name: str, *, user: str | None = None, password: str | None = None) -> str:
        auth = f"{user}:{password}@" if user else ""
        return f"https://{auth}127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self
        expected = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._backend()

            def do_POST(self) -> None:
                self._backend()

            def _backend(self) -> None:
                auth = self.headers.get("Authorization")
                if auth:
                    server.authorizations.append(auth)
                if auth != expected:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                path, _, query = self.path.partition("?")
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                env = {
                    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                    "GIT_PROJECT_ROOT": str(server.root),
                    "GIT_HTTP_EXPORT_ALL": "1",
                    "PATH_INFO": path,
                    "QUERY_STRING": query,
                    "REQUEST_METHOD": self.command,
                    "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                    "CONTENT_LENGTH": str(len(body)),
                    "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                    "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                    "REMOTE_USER": server.user,
                    "REMOTE_ADDR": "127.0.0.1",
                }
                done = subprocess.run(
                    ["git", "http-backend"], input=body, env=env, capture_output=True
                )
                head, _, payload = done.stdout.partition(b"\r\n\r\n")
                status = 200
                headers = []
                for line in head.decode().split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.lower() == "status":
                        status = int(value.split()[0])
                    elif name:
                        headers.append((name, value.strip()))
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler
