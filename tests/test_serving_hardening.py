"""The server's operational edges: unhandled errors keep their request id, hang-ups are counted not traced,
the page works with --token, HEAD /health, multi-frame DICOM limits, connection timeouts, a busy port."""

from __future__ import annotations

import logging
import socket
import time

import httpx
import numpy as np
import pytest

from echocxr.serving.app import ServerConfig, create_app
from echocxr.serving.decode_upload import ImageTooLarge, load_image_bytes
from echocxr.serving.server import BackgroundServer
from tests.test_serving import assert_error, xray
from tests.test_serving_upload import dicom_bytes, ramp


class BrokenEngine:
    """The real engine, except that encoding a prompt hits a bug."""

    def __init__(self, engine):
        self._engine = engine

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def encode(self, *a, **k):
        raise RuntimeError("a bug")


class Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def logs():
    """Records of our logger and uvicorn's (which does not propagate to the root logger)."""
    cap = Capture()
    loggers = [logging.getLogger(n) for n in ("echocxr.serving", "uvicorn.error", "uvicorn")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(cap)
        lg.setLevel(logging.INFO)
    yield cap
    for lg, level in zip(loggers, levels, strict=True):
        lg.removeHandler(cap)
        lg.setLevel(level)


def wait_for(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_unhandled_error_keeps_its_request_id_and_counts_as_5xx(engine, logs):
    app = create_app(BrokenEngine(engine), engine.default_config(max_new_tokens=8), ServerConfig())
    metrics = app.state.metrics
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        r = c.post("/v1/reports", files=[("images", ("a.png", xray(0), "image/png"))],
                   headers={"X-Request-ID": "rid-bug-1"})
        assert_error(r, 500, "internal server error", "server_error")
        assert r.headers["x-request-id"] == "rid-bug-1"
        assert c.get("/health").status_code == 200  # still serving
    assert metrics.value("requests_total", {"endpoint": "/v1/reports", "code": "500"}) == 1
    assert metrics.value("requests_total", {"endpoint": "/v1/reports", "code": "499"}) == 0
    assert metrics.value("errors_total", {"type": "server_error"}) == 1
    lines = [rec.getMessage() for rec in logs.records]
    assert "request_id=rid-bug-1 internal error RuntimeError" in lines
    assert not any("Exception in ASGI application" in line for line in lines)


def test_client_hanging_up_mid_upload_is_one_line_and_a_count(engine, logs):
    app = create_app(engine, engine.default_config(max_new_tokens=8), ServerConfig())
    metrics = app.state.metrics
    with BackgroundServer(app) as srv:
        with socket.create_connection((srv.host, srv.port)) as s:
            s.sendall(b"POST /v1/reports HTTP/1.1\r\nHost: x\r\nX-Request-ID: rid-gone-1\r\n"
                      b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n" + b'{"images": ["' + b"A" * 500)
            time.sleep(0.2)
        wait_for(lambda: metrics.value("client_disconnects_total", {"endpoint": "/v1/reports"}) == 1)
    assert metrics.value("errors_total", {"type": "server_error"}) == 0
    assert metrics.value("requests_total", {"endpoint": "/v1/reports", "code": "499"}) == 1
    mine = [rec for rec in logs.records if "rid-gone-1" in rec.getMessage()]
    assert len(mine) == 1 and "client disconnected during the upload" in mine[0].getMessage()
    assert not any(rec.exc_info or rec.levelno >= logging.ERROR for rec in logs.records)


def test_token_keeps_the_page_and_its_examples_public(engine):
    app = create_app(engine, engine.default_config(max_new_tokens=8), ServerConfig(token="s3cret"))
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        examples = c.get("/examples")
        assert examples.status_code == 200, examples.text
        first = examples.json()["examples"][0]
        assert c.get(first["url"]).headers["content-type"] == "image/png"
        assert c.get("/").status_code == 200
        assert c.get("/v1/models").status_code == 401 and c.get("/metrics").status_code == 401


def test_head_health(engine):
    app = create_app(engine, engine.default_config(max_new_tokens=8), ServerConfig())
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        r = c.head("/health")
        assert r.status_code == 200 and r.content == b""


def test_multi_frame_dicom_413_names_the_frames(engine):
    frames = dicom_bytes(np.stack([ramp(64, 64).astype(np.uint16)] * 10))
    with pytest.raises(ImageTooLarge, match=r"10 frames of 64x64 pixels = 0\.0 MP"):
        load_image_bytes(frames, max_pixels=64 * 64 * 5)
    app = create_app(engine, engine.default_config(max_new_tokens=8), ServerConfig(max_image_pixels=64 * 64 * 5))
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        r = c.post("/v1/reports", files=[("images", ("a.dcm", frames, "application/dicom"))])
        assert_error(r, 413, "10 frames of 64x64 pixels", "request_too_large")


# ---- connection timeouts ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick(engine):
    config = ServerConfig(idle_timeout_s=0.5, head_timeout_s=0.5, body_timeout_s=0.5)
    with BackgroundServer(create_app(engine, engine.default_config(max_new_tokens=8), config)) as srv:
        yield srv


def closed_within(s: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """(did the server close the connection within `seconds`, what it sent before)."""
    s.settimeout(seconds)
    got = b""
    try:
        while chunk := s.recv(65536):
            got += chunk
    except TimeoutError:
        return False, got
    return True, got


@pytest.mark.parametrize("sent", [b"", b"POST /v1/reports HTTP/1.1\r\nHost: x\r\n"], ids=["silent", "slow-head"])
def test_connection_without_a_request_head_is_closed(quick, sent):
    with socket.create_connection((quick.host, quick.port)) as s:
        s.sendall(sent)
        t0 = time.monotonic()
        closed, got = closed_within(s, 5.0)
        assert closed and got == b"" and time.monotonic() - t0 < 3.0


def test_slow_body_gets_408_and_the_connection_closes(quick):
    with socket.create_connection((quick.host, quick.port)) as s:
        s.sendall(b"POST /v1/reports HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{\"images\"")
        closed, got = closed_within(s, 5.0)
    assert closed and got.startswith(b"HTTP/1.1 408"), got[:200]
    assert b"upload too slow" in got and b"9 bytes received" in got


def test_idle_keep_alive_connection_is_closed(quick):
    with socket.create_connection((quick.host, quick.port)) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        closed, got = closed_within(s, 5.0)
    assert closed and got.startswith(b"HTTP/1.1 200")


def test_serve_refuses_a_busy_port_before_loading_the_model(monkeypatch, capsys):
    from echocxr.cli import main

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the port was checked")

    monkeypatch.setattr("echocxr.cli.serve.load_engine", no_model)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"echocxr serve: error: cannot listen on 127.0.0.1:{port}") and "\n" not in err
