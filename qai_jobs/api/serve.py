"""Running the HTTP API: one uvicorn process, or several sharing one listening socket."""

from __future__ import annotations

import socket

import uvicorn
from uvicorn.supervisors import Multiprocess

from qai_jobs.config import Settings


class _TcpConfig(uvicorn.Config):
    """uvicorn's config, with a listening socket that says it is TCP.

    With ``--workers`` uvicorn binds the socket itself with ``proto`` 0; accepted sockets
    inherit it, and asyncio turns on TCP_NODELAY only for ``IPPROTO_TCP`` ones, so every
    keep-alive request waited ~40 ms for a delayed ACK (a uvicorn bug, still open in 0.54).
    """

    def bind_socket(self) -> socket.socket:
        sock = super().bind_socket()
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.proto:
            return sock
        tcp = socket.socket(sock.family, socket.SOCK_STREAM, socket.IPPROTO_TCP, sock.detach())
        tcp.set_inheritable(True)
        return tcp


def serve(settings: Settings, host: str, port: int, log_level: str, workers: int) -> None:
    if workers == 1:
        from qai_jobs.api.app import create_app

        uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level)
        return
    # Enqueueing is CPU-bound in Python (validation, Celery's send_task): a process per core
    # scales it. Each process builds its own app and connections from the environment.
    config = _TcpConfig(
        "qai_jobs.api:app_from_env",
        factory=True,
        workers=workers,
        host=host,
        port=port,
        log_level=log_level,
    )
    try:
        Multiprocess(config, sockets=[config.bind_socket()]).run()
    except KeyboardInterrupt:
        pass
