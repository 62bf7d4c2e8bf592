"""Serving throughput: dynamic batching vs decoding one request at a time, same machine, same run.

Saves its own tiny Qwen2.5-VL checkpoint (random weights: speed, not quality), starts `echocxr serve` as a
subprocess twice, and sends the same CXR-Phantom studies to it:
  1. one at a time   - server with --max-batch 1 --batch-window-ms 0, 32 concurrent clients
                       (requests queue and are decoded one by one: what serving without batching gives);
  2. batched         - server with --max-batch 32 --batch-window-ms 10, 32 concurrent clients;
  3. single client   - the batched server, one client sending requests back to back (latency floor).
Every report from (2) must equal the report of the same study from (1): batching changes speed only.

    .venv/bin/python benchmarks/serve_throughput.py --out benchmarks/results/serve_throughput.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from io import BytesIO
from pathlib import Path


def build_checkpoint(out: Path, hidden: int, layers: int) -> Path:
    from echocxr.backbones.tiny import save_tiny_checkpoint
    from echocxr.backbones.tokenizer import train_bpe_tokenizer
    from echocxr.data.phantom import phantom_reports

    texts = [f"Findings: {r.findings} Impression: {r.impression}" if r.language == "en" else
             f"所见：{r.findings} 结论：{r.impression}" for r in phantom_reports(0, 200)]
    tok = train_bpe_tokenizer(texts, vocab_size=1024)
    return save_tiny_checkpoint(out, "qwen2_5_vl", tok, seed=0, init_std=0.1, hidden=hidden, layers=layers)


def studies(n: int, size: int) -> list[bytes]:
    from PIL import Image

    from echocxr.data.phantom import render_case, sample_case

    out = []
    for i in range(n):
        buf = BytesIO()
        Image.fromarray(render_case(sample_case(1, i), size=size)[0]).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`echocxr serve` in a subprocess (its own interpreter: client and server do not share a GIL)."""

    def __init__(self, model: Path, max_batch: int, window_ms: float, max_new_tokens: int, threads: int):
        self.port = free_port()
        self.cmd = [sys.executable, "-m", "echocxr.cli", "serve", "--model", str(model), "--port", str(self.port),
                    "--max-batch", str(max_batch), "--batch-window-ms", str(window_ms),
                    "--max-new-tokens", str(max_new_tokens), "--log-level", "warning"]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.proc = subprocess.Popen(self.cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        import httpx

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server did not start in 120 s")

    def metrics(self) -> dict[str, float]:
        import httpx

        text = httpx.get(self.url + "/metrics", timeout=10).text
        out = {}
        for name in ("batch_size_sum", "batch_size_count", "batches_total", "generated_tokens_total",
                     "forwards_total", "batch_forwards_total"):
            m = re.search(rf"^echocxr_{name} ([0-9.e+]+)$", text, re.M)
            out[name] = float(m.group(1)) if m else 0.0
        return out

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def load(url: str, pngs: list[bytes], concurrency: int) -> dict:
    import httpx

    latencies: list[float] = [0.0] * len(pngs)
    reports: list[str] = [""] * len(pngs)
    errors = 0
    tokens = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(pngs)):
        queue.put_nowait(i)

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal errors, tokens
        while not queue.empty():
            i = queue.get_nowait()
            t0 = time.perf_counter()
            r = await c.post("/v1/reports", files=[("images", (f"{i}.png", pngs[i], "image/png"))])
            latencies[i] = time.perf_counter() - t0
            if r.status_code != 200:
                errors += 1
                continue
            body = r.json()
            reports[i] = body["report"]
            tokens += body["stats"]["tokens"]

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*[client(c) for _ in range(concurrency)])
        elapsed = time.perf_counter() - t0
    lat = sorted(latencies)
    return {
        "requests": len(pngs), "concurrency": concurrency, "errors": errors, "elapsed_s": round(elapsed, 3),
        "requests_per_s": round(len(pngs) / elapsed, 2), "tokens_per_s": round(tokens / elapsed, 1),
        "latency_p50_s": round(statistics.median(lat), 4), "latency_p95_s": round(lat[int(0.95 * (len(lat) - 1))], 4),
        "reports": reports,
    }


def run_mode(name: str, model: Path, pngs: list[bytes], args, max_batch: int, window_ms: float,
             concurrency: int) -> tuple[dict, list[str]]:
    with Server(model, max_batch, window_ms, args.max_new_tokens, args.threads) as srv:
        asyncio.run(load(srv.url, pngs[: min(8, len(pngs))], min(concurrency, 8)))  # warm-up
        before = srv.metrics()
        result = asyncio.run(load(srv.url, pngs, concurrency))
        after = srv.metrics()
    d = {k: after[k] - before[k] for k in after}
    result["mean_batch_size"] = round(d["batch_size_sum"] / d["batch_size_count"], 2) if d["batch_size_count"] else 0
    result["server_tpf"] = round(d["generated_tokens_total"] / d["forwards_total"], 3) if d["forwards_total"] else 0
    result["server"] = {"max_batch": max_batch, "batch_window_ms": window_ms}
    reports = result.pop("reports")
    print(f"{name:>14}: {result['requests_per_s']:7.2f} req/s  {result['tokens_per_s']:8.1f} tok/s  "
          f"p50 {result['latency_p50_s'] * 1e3:7.1f} ms  mean batch {result['mean_batch_size']:5.2f}  "
          f"errors {result['errors']}", file=sys.stderr)
    return result, reports


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=128, help="studies sent in each mode")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--hidden", type=int, default=64, help="tiny model width")
    p.add_argument("--layers", type=int, default=2, help="tiny model depth")
    p.add_argument("--threads", type=int, default=1, help="torch threads in the server (OMP_NUM_THREADS)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/serve_throughput.json"))
    args = p.parse_args(argv)

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="echocxr-serve-bench-") as tmp:
        model = build_checkpoint(Path(tmp) / "tiny", args.hidden, args.layers)
        pngs = studies(args.requests, args.image_size)
        one, one_reports = run_mode("one at a time", model, pngs, args, 1, 0.0, args.clients)
        batched, batched_reports = run_mode("batched", model, pngs, args, args.clients, 10.0, args.clients)
        single, _ = run_mode("single client", model, pngs, args, args.clients, 10.0, 1)

    speedup = batched["requests_per_s"] / one["requests_per_s"]
    mismatches = sum(a != b for a, b in zip(one_reports, batched_reports, strict=True))
    result = {
        "command": "python " + shlex.join(["benchmarks/serve_throughput.py", *(argv if argv is not None else sys.argv[1:])]),
        "what": "requests/s of `echocxr serve` with 32 concurrent clients: dynamic batching vs one request at a time",
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "server_torch_threads": args.threads},
        "model": {"kind": "tiny qwen2_5_vl (random weights)", "hidden": args.hidden, "layers": args.layers,
                  "decoder": "onestep (fused cache)", "max_new_tokens": args.max_new_tokens,
                  "image_size": args.image_size},
        "one_at_a_time": one, "batched": batched, "single_client": single,
        "speedup_batched_vs_one_at_a_time": round(speedup, 2),
        "report_mismatches_batched_vs_alone": mismatches,
        "passed": speedup >= 3.0 and mismatches == 0 and one["errors"] == batched["errors"] == 0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"speedup {speedup:.2f}x, mismatches {mismatches}, passed {result['passed']} -> {args.out}", file=sys.stderr)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
