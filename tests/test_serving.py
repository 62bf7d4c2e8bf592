"""The HTTP server end to end: a real uvicorn on 127.0.0.1 in a thread, the tiny Qwen2.5-VL behind it."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import tempfile
import threading
import time
from io import BytesIO

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image

from echocxr.decoding.engine import ReportEngine
from echocxr.serving.app import ServerConfig, create_app
from echocxr.serving.decode_upload import load_image_bytes
from echocxr.serving.server import BackgroundServer
from tests.test_serving_upload import dicom_bytes, encode, png_bomb, ramp

MAX_NEW = 24


def xray(seed: int = 0, size: int = 96) -> bytes:
    rng = np.random.default_rng(seed)
    return encode(Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)))


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


@pytest.fixture(scope="module")
def server(engine):
    config = ServerConfig(max_upload_bytes=3_000_000, max_views=3, max_image_pixels=4_000_000, max_prompt_chars=300,
                          model_name="tiny")
    app = create_app(engine, engine.default_config(max_new_tokens=MAX_NEW), config)
    with BackgroundServer(app) as srv:
        srv.app = app
        yield srv


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def direct(engine, images: list[bytes], lang: str = "en", **overrides):
    """What the engine alone writes for these uploads: the server must return exactly this."""
    cfg = engine.default_config(max_new_tokens=MAX_NEW, **overrides)
    return engine.generate([engine.encode([load_image_bytes(b) for b in images], lang=lang)], cfg)[0]


def read_sse(response: httpx.Response) -> list[tuple[str, object]]:
    events = []
    for raw in response.text.split("\n\n"):
        kind, data = "message", []
        for line in raw.split("\n"):
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        if data:
            body = "\n".join(data)
            events.append((kind, body if body == "[DONE]" else json.loads(body)))
    return events


def wait_idle(client: httpx.Client, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        h = client.get("/health").json()
        if h["pending"] == h["active"] == h["streams"] == h["waiting"] == 0 or time.monotonic() > deadline:
            return h
        time.sleep(0.02)


def assert_error(r: httpx.Response, status: int, match: str, type_: str | None = None) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type"} and "\n" not in err["message"]
    assert match in err["message"], err["message"]
    if type_:
        assert err["type"] == type_


# ---- reports ------------------------------------------------------------------------------------------
def test_report_multipart_equals_direct_decode(client, engine):
    png = xray(0)
    r = client.post("/v1/reports", files=[("images", ("cxr.png", png, "image/png"))], data={"lang": "en"},
                    headers={"X-Request-ID": "study-42"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "study-42"
    body = r.json()
    gen = direct(engine, [png])
    assert body["report"] == gen.text and body["id"] == "study-42"
    stats = body["stats"]
    assert stats["tokens"] == gen.tokens and stats["forwards"] == gen.forwards and stats["decoder"] == "onestep"
    assert stats["tpf"] == pytest.approx(gen.tpf) and stats["latency_s"] > 0 and stats["batch_size"] >= 1
    assert {"findings", "impression"} <= set(body)


def test_report_carries_token_confidence(client, engine):
    from echocxr.decoding.confidence import confidence_fields

    png = xray(3)
    body = client.post("/v1/reports", files=[("images", ("cxr.png", png, "image/png"))]).json()
    want = confidence_fields(engine.bb.tokenizer, direct(engine, [png]))  # the library's, for the same decode
    assert body["pieces"] == want["pieces"] and body["sentences"] == want["sentences"] != []
    assert "".join(p["text"] for p in body["pieces"]) == body["report"]
    assert all(0 < s["min_confidence"] <= s["mean_confidence"] <= 1 for s in body["sentences"])


def test_report_json_multi_view_chinese_multistep(client, engine):
    views = [xray(1), xray(2, 80)]
    r = client.post("/v1/reports", json={"images": [base64.b64encode(views[0]).decode(), data_uri(views[1])],
                                          "lang": "zh", "decoder": "multistep", "steps": 2})
    assert r.status_code == 200, r.text
    gen = direct(engine, views, lang="zh", decoder="multistep", steps=2)
    assert r.json()["report"] == gen.text and r.json()["stats"]["forwards"] == gen.forwards


def test_report_one_step_with_refinement(client, engine):
    views = [xray(4)]
    r = client.post("/v1/reports", json={"images": [base64.b64encode(views[0]).decode()], "refine": 1.0})
    assert r.status_code == 200, r.text
    gen = direct(engine, views, refine=1.0)  # no token is surer than 1: two forwards a block
    assert r.json()["report"] == gen.text and r.json()["stats"]["forwards"] == gen.forwards > direct(engine, views).forwards
    bad = client.post("/v1/reports", json={"images": [base64.b64encode(views[0]).decode()], "refine": 0.5,
                                           "decoder": "ar"})
    assert bad.status_code == 400 and "one-step decoder" in bad.json()["error"]["message"]


@pytest.mark.parametrize("make", [
    lambda: encode(Image.fromarray(ramp(64, 64).astype(np.uint16) * 200)),  # 16-bit PNG
    lambda: encode(Image.new("RGBA", (64, 64), (90, 90, 90, 128))),
    lambda: encode(Image.new("CMYK", (64, 64), (10, 20, 30, 40)), "JPEG"),
    lambda: dicom_bytes(ramp(64, 64).astype(np.uint16) * 16, "MONOCHROME1"),
], ids=["png16", "rgba", "cmyk-jpeg", "dicom-monochrome1"])
def test_unusual_but_valid_formats_are_accepted(client, make):
    r = client.post("/v1/reports", files=[("images", ("view", make(), "application/octet-stream"))])
    assert r.status_code == 200, r.text
    assert r.json()["stats"]["tokens"] > 0


def test_browser_style_multipart_boundary(client):
    """Browsers use mixed-case boundaries (----WebKitFormBoundary...): the parameter is case-sensitive."""
    boundary = "----WebKitFormBoundaryAbCdEf012345"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"a.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + xray(0) + (
            f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"lang\"\r\n\r\nzh\r\n--{boundary}--\r\n").encode()
    r = client.post("/v1/reports", content=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 200, r.text


def test_uploads_never_touch_the_disk(client, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("upload written to a temporary file")

    for name in ("SpooledTemporaryFile", "TemporaryFile", "NamedTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, refuse)
    big = encode(Image.fromarray(np.random.default_rng(3).integers(0, 255, (1100, 1100), dtype=np.uint8)))
    assert len(big) > 1_100_000  # past Starlette's 1 MB spool-to-disk threshold
    r = client.post("/v1/reports", files=[("images", ("big.png", big, "image/png"))])
    assert r.status_code == 200, r.text


# ---- OpenAI-compatible chat --------------------------------------------------------------------------
def test_chat_completion(client, engine):
    png = xray(4)
    msg = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri(png)}}]}
    r = client.post("/v1/chat/completions", json={"model": "tiny", "messages": [msg], "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": direct(engine, [png]).text}
    assert choice["finish_reason"] in ("stop", "length")
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]


def test_chat_completion_streaming(client, engine):
    png = xray(5)
    msg = {"role": "user", "content": [{"type": "text", "text": ""},
                                       {"type": "image_url", "image_url": {"url": data_uri(png)}}]}
    r = client.post("/v1/chat/completions", json={"messages": [msg], "stream": True,
                                                  "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = read_sse(r)
    assert events[-1] == ("message", "[DONE]")
    chunks = [e[1] for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text.strip() == direct(engine, [png]).text
    assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length") and "usage" in chunks[-1]


# ---- streaming ----------------------------------------------------------------------------------------
def test_stream_sends_blocks_then_done(client, engine):
    png = xray(6)
    r = client.post("/v1/reports?stream=true", files=[("images", ("a.png", png, "image/png"))])
    events = read_sse(r)
    kinds = [k for k, _ in events]
    assert kinds[-1] == "done" and "step" not in kinds and kinds.count("block") >= MAX_NEW // 4
    gen = direct(engine, [png])
    assert events[-1][1]["report"] == gen.text
    assert "".join(d["text"] for k, d in events if k == "block").strip() == gen.text


def test_stream_steps_show_masks_for_the_page(client, engine):
    png = xray(7)
    r = client.post("/v1/reports/stream?steps=true", files=[("images", ("a.png", png, "image/png"))],
                    data={"decoder": "multistep"})
    events = read_sse(r)
    steps = [d for k, d in events if k == "step"]
    assert steps and any(any(t["masked"] for t in s["tokens"]) for s in steps)  # low confidence: 1 token a step
    assert all(not (t["masked"] and t["new"]) for s in steps for t in s["tokens"])
    assert events[-1][1]["report"] == direct(engine, [png], decoder="multistep").text
    for block in {s["block"] for s in steps}:  # each position is committed exactly once, >= 1 per step
        mine = [s for s in steps if s["block"] == block]
        assert all(sum(t["new"] for t in s["tokens"]) >= 1 for s in mine)
        assert sum(t["new"] for s in mine for t in s["tokens"]) == len(mine[0]["tokens"])


def test_stream_events_carry_token_confidence(client, engine):
    from echocxr.decoding.confidence import confidence_fields

    png = xray(8)
    events = read_sse(client.post("/v1/reports/stream?steps=true", files=[("images", ("a.png", png, "image/png"))],
                                  data={"decoder": "multistep"}))
    blocks = [d for k, d in events if k == "block"]
    assert blocks and all("".join(p["text"] for p in b["pieces"]) == b["text"] for b in blocks)
    done = events[-1][1]
    want = confidence_fields(engine.bb.tokenizer, direct(engine, [png], decoder="multistep"))
    assert done["pieces"] == want["pieces"] and done["sentences"] == want["sentences"]
    assert [p for b in blocks for p in b["pieces"]] == done["pieces"]  # the stream's pieces are the report's
    tokens = [t for k, d in events if k == "step" for t in d["tokens"]]
    assert all((t["confidence"] is None) == t["masked"] for t in tokens)
    assert all(0 < t["confidence"] <= 1 for t in tokens if not t["masked"])


# ---- batching ------------------------------------------------------------------------------------------
def test_concurrent_requests_are_batched_and_equal_alone(server, engine):
    pngs = [xray(10 + i) for i in range(6)]
    decoders = ["onestep", "onestep", "onestep", "onestep", "multistep", "multistep"]
    expected = [direct(engine, [p], decoder=d).text for p, d in zip(pngs, decoders, strict=True)]

    async def go():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            return await asyncio.gather(*[
                c.post("/v1/reports", files=[("images", ("a.png", p, "image/png"))], data={"decoder": d})
                for p, d in zip(pngs, decoders, strict=True)])

    rs = asyncio.run(go())
    assert [r.json()["report"] for r in rs] == expected  # batched == one by one
    sizes = [r.json()["stats"]["batch_size"] for r in rs]
    assert max(sizes) > 1  # requests arriving together were decoded together
    assert all(s <= 4 for s in sizes[:4]) and all(s <= 2 for s in sizes[4:])  # settings never mix in a batch


# ---- errors and limits ----------------------------------------------------------------------------------
def _jpeg_truncated() -> bytes:
    data = encode(Image.fromarray(ramp(200, 200)), "JPEG")
    return data[: len(data) // 2]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("case", [
    dict(files=[b"just some text, not an image" * 4], status=400, match="not an image"),
    dict(files=[xray(0), b"junk" * 40], status=400, match="view 2 of 2: not an image"),
    dict(files=[_jpeg_truncated()], status=400, match="cannot decode JPEG"),
    dict(files=[encode(Image.new("L", (1, 1)))], status=400, match="too small: 1x1"),
    dict(files=[png_bomb(20000)], status=413, match="too large", type_="request_too_large"),
    dict(files=[encode(Image.new("L", (2100, 2100)))], status=413, match="4.4 MP"),  # over this server's 4 MP
    dict(files=[xray(0)] * 4, status=400, match="too many views: 4"),
    dict(files=[], status=400, match="no image"),
    dict(files=[xray(0)], data={"lang": "fr"}, status=400, match="unknown language 'fr'"),
    dict(files=[xray(0)], data={"decoder": "magic"}, status=400, match="unknown decoder 'magic'"),
    dict(files=[xray(0)], data={"max_new_tokens": "100000"}, status=400, match="max_new_tokens must be"),
    dict(files=[xray(0)], data={"steps": "many"}, status=400, match="'steps' must be an integer"),
    dict(files=[xray(0)], data={"colour": "red"}, status=400, match="unknown form field 'colour'"),
    dict(files=[xray(0)], data={"instruction": "x" * 400}, status=400, match="prompt too long: 400 characters"),
], ids=["not-image", "bad-second-view", "truncated-jpeg", "1x1", "bomb", "too-many-pixels", "too-many-views", "no-image",
        "bad-lang", "bad-decoder", "too-many-tokens", "bad-steps", "unknown-field", "long-prompt"])
def test_bad_multipart_requests(client, case):
    files = [("images", (f"v{i}", b, "application/octet-stream")) for i, b in enumerate(case["files"])]
    r = client.post("/v1/reports", files=files or None, data=case.get("data", {"lang": "en"}))
    assert_error(r, case["status"], case["match"], case.get("type_"))


@pytest.mark.parametrize("body,status,match", [
    (b"{not json", 400, "malformed JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (b"", 400, "empty request body"),
    (json.dumps({"images": ["%%%"]}).encode(), 400, "not valid base64"),
    (json.dumps({"images": ["https://example.org/a.png"]}).encode(), 400, "not fetched"),
    (json.dumps({"images": [], "lang": "de"}).encode(), 400, "unknown language 'de'"),
    (json.dumps({"imgs": []}).encode(), 400, "unknown field 'imgs'"),
    (json.dumps({"images": [], "max_new_tokens": "12"}).encode(), 400, "'max_new_tokens' must be an integer"),
])
def test_bad_json_requests(client, body, status, match):
    assert_error(client.post("/v1/reports", content=body, headers={"content-type": "application/json"}),
                 status, match)


def test_other_protocol_errors(client):
    assert_error(client.post("/v1/reports", content=b"x" * 3_100_000, headers={"content-type": "application/json"}),
                 413, "upload too large", "request_too_large")
    assert_error(client.post("/v1/reports", content=b"a,b", headers={"content-type": "text/csv"}),
                 415, "unsupported content type")
    assert_error(client.get("/v1/nothing"), 404, "Not Found", "not_found")
    assert_error(client.get("/v1/reports"), 405, "Method Not Allowed")
    msg = {"role": "user", "content": [{"type": "text", "text": "describe " * 60},
                                       {"type": "image_url", "image_url": {"url": data_uri(xray(0))}}]}
    assert_error(client.post("/v1/chat/completions", json={"messages": [msg]}), 400, "prompt too long")
    assert_error(client.post("/v1/chat/completions", json={"messages": []}), 400, "non-empty list")
    bad_part = {"role": "user", "content": [{"type": "audio", "data": "x"}]}
    assert_error(client.post("/v1/chat/completions", json={"messages": [bad_part]}), 400, "unsupported content part")


def test_health_metrics_and_examples(client):
    client.post("/v1/reports", files=[("images", ("a.png", xray(0), "image/png"))])
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["model"] == "tiny" and h["languages"] == ["en", "zh"]
    text = client.get("/metrics").text
    for name in ("echocxr_requests_total{", "echocxr_errors_total{", "echocxr_request_latency_seconds_bucket{",
                 "echocxr_batch_size_bucket{le=", "echocxr_generated_tokens_total ", "echocxr_forwards_total ",
                 "echocxr_queue_depth 0"):
        assert name in text, name
    assert 'endpoint="/v1/reports"' in text and "# TYPE echocxr_request_latency_seconds histogram" in text
    ex = client.get("/examples").json()["examples"]
    png = client.get(ex[0]["url"])
    assert png.headers["content-type"] == "image/png" and Image.open(BytesIO(png.content)).size == (384, 384)
    spec = client.get("/openapi.json").json()
    assert "multipart/form-data" in spec["paths"]["/v1/reports"]["post"]["requestBody"]["content"]
    page = client.get("/")
    assert page.status_code == 200 and "<script src=\"/static/app.js\">" in page.text


def test_logs_carry_request_ids_not_reports(client, caplog):
    png = xray(8)
    with caplog.at_level(logging.INFO, logger="echocxr.serving"):
        r = client.post("/v1/reports", files=[("images", ("a.png", png, "image/png"))],
                        headers={"X-Request-ID": "rid-log-1"})
        client.post("/v1/reports", files=[("images", ("b.png", b"garbage" * 10, "image/png"))])
    report = r.json()["report"]
    lines = [rec.getMessage() for rec in caplog.records]
    assert any("request_id=rid-log-1" in line for line in lines)
    assert not any(report in line or "garbage" in line for line in lines)


def test_bearer_token(engine):
    app = create_app(engine, engine.default_config(max_new_tokens=8), ServerConfig(token="s3cret"))
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        files = [("images", ("a.png", xray(0), "image/png"))]
        assert_error(c.post("/v1/reports", files=files), 401, "bearer token", "authentication_error")
        assert_error(c.post("/v1/reports", files=files, headers={"Authorization": "Bearer nope"}), 401, "token")
        assert c.get("/metrics").status_code == 401
        assert c.get("/health").json()["auth"] is True and c.get("/").status_code == 200
        r = c.post("/v1/reports", files=files, headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200


# ---- disconnects, soak ---------------------------------------------------------------------------------
class SlowEngine:
    """The real engine, slowed to ~20 ms per step so a client can leave mid-decode."""

    def __init__(self, engine: ReportEngine, delay: float = 0.02):
        self._engine, self._delay = engine, delay

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def generate(self, prompts, cfg, on_event=None, is_cancelled=None):
        def slow(i: int) -> bool:
            if i == 0:
                time.sleep(self._delay)
            return bool(is_cancelled and is_cancelled(i))

        return self._engine.generate(prompts, cfg, on_event=on_event, is_cancelled=slow)


def test_client_disconnect_cancels_and_leaks_nothing(engine):
    app = create_app(SlowEngine(engine), engine.default_config(max_new_tokens=512), ServerConfig())
    metrics = app.state.metrics
    files = [("images", ("a.png", xray(9), "image/png"))]
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        t0 = time.monotonic()
        with c.stream("POST", "/v1/reports/stream", files=files) as r:  # 128 blocks x 20 ms if it ran to the end
            for line in r.iter_lines():
                if line.startswith("event: block"):
                    break  # leave mid-stream
        h = wait_idle(c)
        assert h["pending"] == h["active"] == h["streams"] == h["waiting"] == 0
        assert metrics.value("cancelled_total") == 1 and time.monotonic() - t0 < 2.0

        def impatient() -> None:  # a non-streaming client that gives up
            with httpx.Client(base_url=srv.url, timeout=0.3) as quick, pytest.raises(httpx.ReadTimeout):
                quick.post("/v1/reports", files=files)

        th = threading.Thread(target=impatient)
        th.start()
        th.join()
        h = wait_idle(c)
        assert h["pending"] == h["active"] == h["waiting"] == 0
        assert metrics.value("cancelled_total") == 2
        assert c.post("/v1/reports", files=files, data={"max_new_tokens": "8"}).status_code == 200  # still serving


def test_soak_200_requests_32_clients(server, client):
    pngs = [xray(100 + i, 64 + 8 * (i % 4)) for i in range(8)]

    async def soak(n: int) -> list[int]:
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as c:
            sem = asyncio.Semaphore(32)

            async def one(i: int) -> int:
                async with sem:
                    if i % 4 == 3:
                        r = await c.post("/v1/reports/stream", files=[("images", ("a.png", pngs[i % 8], "image/png"))])
                        return r.status_code if "event: done" in r.text else 599
                    r = await c.post("/v1/reports", json={"images": [base64.b64encode(pngs[i % 8]).decode()]})
                    return r.status_code

            return await asyncio.gather(*[one(i) for i in range(n)])

    proc = psutil.Process()
    assert set(asyncio.run(soak(32))) == {200}  # warm-up: allocator pools, thread pool, caches
    rss0 = proc.memory_info().rss
    t0 = time.perf_counter()
    codes = asyncio.run(soak(200))
    elapsed = time.perf_counter() - t0
    rss1 = proc.memory_info().rss
    assert codes.count(200) == 200, {c: codes.count(c) for c in set(codes)}
    assert rss1 < rss0 * 1.10, f"RSS grew {rss0 / 2**20:.0f} -> {rss1 / 2**20:.0f} MiB"
    h = wait_idle(client)
    assert h["pending"] == h["active"] == h["streams"] == h["waiting"] == 0
    print(f"soak: 200 requests in {elapsed:.1f}s, RSS {rss0 / 2**20:.0f} -> {rss1 / 2**20:.0f} MiB")
