"""LLM rewriter against a real OpenAI-style HTTP server started on 127.0.0.1 in a thread."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from echocxr.data.manifest import Sample
from echocxr.data.rewriter import (
    REGIONS,
    ReportRewriter,
    RewriteError,
    RewriterConfig,
    RewriteWarning,
    parse_answer,
    rewrite_samples,
)

GOOD_EN = (
    "Findings: The thorax is symmetric. The mediastinum and trachea are midline. The lungs are clear. "
    "The cardiac silhouette is normal. The hila are normal. The diaphragms and costophrenic angles are "
    "normal. The bony structures are unremarkable.\nImpression: No acute cardiopulmonary disease."
)
GOOD_ZH = "所见：两侧胸廓对称。纵隔及气管居中。两肺野清晰。心影不大。两肺门影不大。两侧膈肌光滑，肋膈角锐利。骨性结构未见异常。\n结论：心肺未见异常。"


def completion(content: str) -> dict:
    return {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}


class ScriptedServer:
    """Answers POST /v1/chat/completions from a script of (status, body, delay_s) steps."""

    def __init__(self, steps):
        self.steps = list(steps)
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer.lock:
                    outer.requests.append(
                        {"path": self.path, "auth": self.headers.get("Authorization"), "json": json.loads(body)}
                    )
                    status, payload, delay = outer.steps.pop(0) if outer.steps else (500, "script exhausted", 0)
                if delay:
                    time.sleep(delay)
                data = payload if isinstance(payload, str) else json.dumps(payload)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data.encode())))
                    self.end_headers()
                    self.wfile.write(data.encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def make(server, **kw) -> ReportRewriter:
    cfg = dict(base_url=server.base_url, model="tiny-llm", api_key="sk-test", timeout_s=2.0,
               max_retries=2, backoff_s=0.01, max_backoff_s=0.05)
    cfg.update(kw)
    return ReportRewriter(RewriterConfig(**cfg))


def test_success_sends_prompt_and_parses_answer():
    with ScriptedServer([(200, completion(GOOD_EN), 0)]) as srv, make(srv) as rw:
        sec = rw.rewrite("FINDINGS: No effusion.\nIMPRESSION: Normal chest.", language="en")
    assert sec.findings.startswith("The thorax is symmetric.") and sec.findings.endswith("unremarkable.")
    assert sec.impression == "No acute cardiopulmonary disease."
    (req,) = srv.requests
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    assert req["json"]["model"] == "tiny-llm" and req["json"]["temperature"] == 0.0
    prompt = req["json"]["messages"][-1]["content"]
    assert "No effusion." in prompt and all(region in prompt for region in REGIONS["en"])


def test_chinese_answer_and_reasoning_block():
    answer = "<think>reasoning about the report</think>\n" + GOOD_ZH
    with ScriptedServer([(200, completion(answer), 0)]) as srv, make(srv, api_key=None) as rw:
        sec = rw.rewrite(findings="Lungs clear.", impression="Normal.", language="zh")
    assert sec.impression == "心肺未见异常。" and sec.findings.startswith("两侧胸廓对称。")
    assert srv.requests[0]["auth"] is None
    assert "所见" in srv.requests[0]["json"]["messages"][-1]["content"]


def test_malformed_answer_is_a_clear_error_without_retry():
    with ScriptedServer([(200, completion("Sure! The lungs look fine."), 0)]) as srv, make(srv) as rw:
        with pytest.raises(RewriteError, match="malformed rewriter answer"):
            rw.rewrite("Lungs clear.")
    assert len(srv.requests) == 1
    with pytest.raises(RewriteError, match="not Chinese"):
        parse_answer(GOOD_EN, "zh")


def test_server_error_then_success_is_retried():
    steps = [(500, {"error": "overloaded"}, 0), (503, "busy", 0), (200, completion(GOOD_EN), 0)]
    with ScriptedServer(steps) as srv, make(srv) as rw:
        sec = rw.rewrite("Lungs clear.")
    assert sec.impression == "No acute cardiopulmonary disease." and len(srv.requests) == 3


def test_client_error_is_not_retried():
    with ScriptedServer([(401, {"error": "bad key"}, 0)]) as srv, make(srv) as rw:
        with pytest.raises(RewriteError, match="refused the request: HTTP 401"):
            rw.rewrite("Lungs clear.")
    assert len(srv.requests) == 1


def test_timeout_then_give_up():
    steps = [(200, completion(GOOD_EN), 1.0), (200, completion(GOOD_EN), 1.0)]
    with ScriptedServer(steps) as srv, make(srv, timeout_s=0.2, max_retries=1) as rw:
        t0 = time.monotonic()
        with pytest.raises(RewriteError, match=r"failed after 2 attempt\(s\): timed out after 0.2s"):
            rw.rewrite("Lungs clear.")
        assert time.monotonic() - t0 < 1.5
    assert len(srv.requests) == 2


def test_timeout_then_success():
    steps = [(200, completion(GOOD_EN), 1.0), (200, completion(GOOD_EN), 0)]
    with ScriptedServer(steps) as srv, make(srv, timeout_s=0.3) as rw:
        assert rw.rewrite("Lungs clear.").impression == "No acute cardiopulmonary disease."


def test_connection_refused_is_one_line():
    with ScriptedServer([]) as srv:
        url = srv.base_url
    with ReportRewriter(RewriterConfig(base_url=url, model="m", max_retries=1, backoff_s=0.01)) as rw:
        with pytest.raises(RewriteError, match="connection failed") as exc:
            rw.rewrite("Lungs clear.")
    assert "\n" not in str(exc.value)


def test_rewrite_samples_skips_failures_with_one_warning():
    samples = [Sample(f"s{i}", ["a.png"], "Lungs clear.", "Normal.") for i in range(3)]
    steps = [(200, completion(GOOD_EN), 0), (200, completion("no sections here"), 0), (200, completion(GOOD_EN), 0)]
    with ScriptedServer(steps) as srv, make(srv) as rw:
        with pytest.warns(RewriteWarning, match="failed on 1 of 3") as record:
            out = rewrite_samples(samples, rw, on_error="skip")
    assert len(record) == 1
    assert [s.sample_id for s in out] == ["s0", "s2"]
    assert out[0].impression == "No acute cardiopulmonary disease." and samples[0].impression == "Normal."


def test_prompt_regions_can_be_overridden():
    rw = ReportRewriter(RewriterConfig(base_url="http://127.0.0.1:9/v1/chat/completions", model="m",
                                       regions=("heart", "lungs")))
    assert rw.url == "http://127.0.0.1:9/v1/chat/completions"
    prompt = rw.messages("Lungs clear.", "en")[-1]["content"]
    assert "heart; lungs" in prompt and "hila" not in prompt
    with pytest.raises(RewriteError):
        rw.messages("x", "fr")
    rw.close()
