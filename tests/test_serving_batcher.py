"""The batcher alone (a fake engine: exact control of timing) and the `echocxr serve` command line."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace

import httpx
import pytest

from echocxr.cli import main
from echocxr.decoding.engine import DecodeConfig
from echocxr.decoding.results import Generation
from echocxr.serving.batcher import Batcher, Job, Overloaded


class FakeEngine:
    """Records each batch's (size, decoder); blocks on `gate` so tests can queue work behind a running batch."""

    def __init__(self):
        self.batches: list[tuple[int, str]] = []
        self.gate = threading.Event()
        self.gate.set()

    def generate(self, prompts, cfg, on_event=None, is_cancelled=None):
        self.gate.wait(10)
        self.batches.append((len(prompts), cfg.decoder))
        stop = ["cancelled" if is_cancelled and is_cancelled(i) else "eos" for i in range(len(prompts))]
        return [Generation(f"report {p}", [], 1, 1, 0.0, 0.0, s, cfg.decoder) for p, s in zip(prompts, stop, strict=True)]


async def collect(jobs: list[Job]) -> list[tuple[str, object]]:
    return [await asyncio.wait_for(j.queue.get(), 10) for j in jobs]


def test_batches_group_by_settings_and_respect_max_batch():
    engine = FakeEngine()
    batcher = Batcher(engine, max_batch=3, window_s=0.05)
    one, multi = DecodeConfig(decoder="onestep"), DecodeConfig(decoder="multistep", steps=2)

    async def go():
        loop = asyncio.get_running_loop()
        engine.gate.clear()  # a first batch holds the decode thread while seven jobs queue up behind it
        blocker = Job("blocker", DecodeConfig(decoder="ar"), loop)
        batcher.submit(blocker)
        while batcher.counts()["active"] == 0:
            await asyncio.sleep(0.005)
        jobs = [Job(i, one if i % 2 == 0 else multi, loop) for i in range(7)]
        for j in jobs:
            batcher.submit(j)
        assert batcher.counts() == {"pending": 7, "active": 1}
        engine.gate.set()
        return jobs, await collect([blocker, *jobs])

    jobs, out = asyncio.run(go())
    batcher.stop()
    assert [k for k, _ in out] == ["done"] * 8
    assert [g.text for _, g in out[1:]] == [f"report {i}" for i in range(7)]
    # oldest first; same settings only; at most max_batch: [0 2 4] [1 3 5] [6]
    assert engine.batches == [(1, "ar"), (3, "onestep"), (3, "multistep"), (1, "onestep")]
    assert batcher.counts() == {"pending": 0, "active": 0}
    assert [j.batch_size for j in jobs] == [3, 3, 3, 3, 3, 3, 1]


def test_queue_limit_and_cancelled_jobs_are_dropped():
    engine = FakeEngine()
    batcher = Batcher(engine, max_batch=2, window_s=0.0, max_queue=2)
    cfg = DecodeConfig()

    async def go():
        loop = asyncio.get_running_loop()
        engine.gate.clear()  # hold the first batch so the next jobs stay queued
        first = Job("a", cfg, loop)
        batcher.submit(first)
        while batcher.counts()["active"] == 0:
            await asyncio.sleep(0.005)
        queued = [Job("b", cfg, loop), Job("c", replace(cfg, seed=1), loop)]
        for j in queued:
            batcher.submit(j)
        with pytest.raises(Overloaded, match="limit 2"):
            batcher.submit(Job("d", cfg, loop))
        queued[0].cancel()  # client left while queued: never decoded
        engine.gate.set()
        return await collect([first, queued[1]])

    out = asyncio.run(go())
    batcher.stop()
    assert [g.text for _, g in out] == ["report a", "report c"]
    assert engine.batches == [(1, "onestep"), (1, "onestep")]
    assert batcher.metrics.value("cancelled_total") == 1


def test_engine_failure_fails_the_batch_not_the_server():
    class Broken(FakeEngine):
        def generate(self, prompts, cfg, on_event=None, is_cancelled=None):
            if prompts[0] == "boom":
                raise RuntimeError("CUDA out of memory")
            return super().generate(prompts, cfg, on_event, is_cancelled)

    batcher = Batcher(Broken(), max_batch=4, window_s=0.0)

    async def go():
        loop = asyncio.get_running_loop()
        bad = Job("boom", DecodeConfig(), loop)
        batcher.submit(bad)
        first = await collect([bad])
        good = Job("fine", DecodeConfig(), loop)
        batcher.submit(good)
        return first + await collect([good])

    out = asyncio.run(go())
    batcher.stop()
    assert out[0][0] == "error" and isinstance(out[0][1], RuntimeError)
    assert out[1][0] == "done" and out[1][1].text == "report fine"


def test_serve_cli_rejects_bad_options(capsys, tiny_vl_dir):
    assert main(["serve", "--model", str(tiny_vl_dir), "--max-batch", "0"]) == 2
    assert "--max-batch must be in 1..1024" in capsys.readouterr().err


def test_serve_cli_wires_options_into_the_app(tiny_vl_dir, monkeypatch):
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: seen.setdefault("config", self.config))
    monkeypatch.setenv("ECHOCXR_API_TOKEN", "tok")
    assert main(["serve", "--model", str(tiny_vl_dir), "--port", "8123", "--max-new-tokens", "8",
                 "--max-batch", "4", "--decoder", "multistep", "--log-level", "warning"]) == 0
    config = seen["config"]
    assert (config.host, config.port, config.access_log) == ("127.0.0.1", 8123, False)  # loopback by default

    async def probe():
        transport = httpx.ASGITransport(app=config.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            health = (await c.get("/health")).json()
            denied = (await c.get("/v1/models")).status_code
            models = (await c.get("/v1/models", headers={"Authorization": "Bearer tok"})).json()
            return health, denied, models

    health, denied, models = asyncio.run(probe())
    assert health["auth"] is True and health["max_new_tokens"] == 8 and health["max_batch"] == 4
    assert health["decoder"] == "multistep" and denied == 401
    assert models["data"][0]["id"] == tiny_vl_dir.name
