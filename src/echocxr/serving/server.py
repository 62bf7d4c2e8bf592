"""Run the app under uvicorn: in the foreground (`echocxr serve`) or in a background thread (tests, benchmarks)."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn


def uvicorn_config(app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> uvicorn.Config:
    """uvicorn settings for our app, with the connection timeouts of its ServerConfig (`app.state.config`)."""
    from echocxr.serving.connection import head_timeout_protocol

    config = getattr(getattr(app, "state", None), "config", None)
    head_s = getattr(config, "head_timeout_s", 10.0)
    idle_s = getattr(config, "idle_timeout_s", 5.0)
    # our middleware writes the access line (with the request id); uvicorn's would duplicate it
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, lifespan="on",
                          timeout_graceful_shutdown=5, timeout_keep_alive=idle_s,
                          http=head_timeout_protocol(head_s))


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready socket bound to host:port (before the model loads: a busy port fails in a second)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine; another listener is not
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class BackgroundServer:
    """A real uvicorn server on 127.0.0.1 (a free port unless given) in a daemon thread.

    Use as a context manager; `url` is the base URL. The listening socket is bound before the thread
    starts, so there is no race for the port.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.sock = bind_socket(host, port)
        self.host, self.port = self.sock.getsockname()[:2]
        self.server = uvicorn.Server(uvicorn_config(app, self.host, self.port, log_level))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name="echocxr-uvicorn")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()
