"""Run one fixed-shape decoding step eagerly, compiled (torch.compile) or replayed from a CUDA graph.

Why: at batch 1 a 7B one-step forward is ~1,000 small kernels, so the host's launch time, not the weights,
sets the pace. A step whose shapes never change can be recorded once and replayed: a CUDA graph replays all
its kernels in one launch (capturing costs one step, no compile time); torch.compile (inductor) fuses the
small ops instead, which is what pays on CPU but takes tens of seconds per shape. The step must read and
write only buffers that keep their address (decoding/fast_engine.py keeps one set per shape), and must not
sync with the host. Any failure to capture falls back to the eager step with a warning, so a decode never
fails for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable

import torch

log = logging.getLogger(__name__)

BACKENDS = ("cudagraph", "inductor", "reduce-overhead")


def resolve_backend(backend: str, device: torch.device) -> str:
    """'auto': CUDA graphs on CUDA, inductor elsewhere."""
    if backend == "auto":
        backend = "cudagraph" if device.type == "cuda" else "inductor"
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} (auto, {', '.join(BACKENDS)})")
    return "inductor" if backend == "cudagraph" and device.type != "cuda" else backend


class StepCapture:
    """Calls `step(*args)` through the backend, one compiled graph / CUDA graph per shape `key`."""

    def __init__(self, step: Callable, device: torch.device, backend: str = "auto"):
        self.step = step
        self.device = device
        self.backend = resolve_backend(backend, device)
        self.compile_s = 0.0  # wall time of the calls that compiled or captured a shape
        self.error: str | None = None  # why capturing failed (then every call runs eagerly)
        self._graphs: dict[Hashable, tuple] = {}
        self._seen: dict[Hashable, int] = {}
        self._compiled: Callable | None = None
        self._pool = None

    def __call__(self, key: Hashable, *args):
        if self.error is not None:
            return self.step(*args)
        try:
            if self.backend == "cudagraph":
                return self._graph(key, args)
            return self._inductor(key, args)
        except Exception as exc:  # noqa: BLE001 - any capture failure: decode on, eagerly
            self.error = f"{type(exc).__name__}: {exc}"
            log.warning("fast path: capturing the step failed (%s); decoding eagerly", self.error)
            return self.step(*args)

    def forget(self, match: Callable[[Hashable], bool]) -> None:
        """Drop the CUDA graphs whose key matches (their buffers are gone)."""
        self._graphs = {k: v for k, v in self._graphs.items() if not match(k)}

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _inductor(self, key, args):
        if self._compiled is None:
            # one graph per shape key: more variants than dynamo's default limit of 8
            for name in ("recompile_limit", "cache_size_limit"):
                if hasattr(torch._dynamo.config, name):
                    setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 64))
            mode = "reduce-overhead" if self.backend == "reduce-overhead" else None
            self._compiled = torch.compile(self.step, mode=mode, dynamic=False)
        fresh = key not in self._seen
        t = self._now() if fresh else 0.0
        self._seen[key] = 1
        if self.backend == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        out = self._compiled(*args)
        if fresh:
            self.compile_s += self._now() - t
        return out

    def _graph(self, key, args):
        """The first call of a shape runs eagerly on a side stream (warm-up: lazy inits stay out of the graph),
        the second is captured (recorded, not run) and replayed, every later one replayed."""
        graph = self._graphs.get(key)
        if graph is None:
            seen = self._seen.get(key, 0)
            self._seen[key] = seen + 1
            t = self._now()
            if seen == 0:
                stream = torch.cuda.Stream(self.device)
                stream.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(stream):
                    out = self.step(*args)
                torch.cuda.current_stream(self.device).wait_stream(stream)
                self.compile_s += self._now() - t
                return out
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=self._pool):
                out = self.step(*args)
            self._graphs[key] = graph = (g, out)
            self.compile_s += self._now() - t
        graph[0].replay()
        return graph[1]
