"""Dynamic batching: one decode thread owns the engine; concurrent requests are decoded together.

Requests are queued as `Job`s. The worker waits until the oldest job has waited `window_s` (or `max_batch`
jobs are queued), then decodes every queued job whose decode settings equal the oldest one's, up to
`max_batch`, in one `ReportEngine.generate` call; jobs with other settings wait for the next round. Events
go back to each job's asyncio queue through its loop's `call_soon_threadsafe`, the only thread-safe way into
an event loop. A job whose client went away is marked cancelled: it is dropped if still queued, and leaves
the running batch at the engine's next step (`is_cancelled`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import astuple

from echocxr.backbones.prompt import EncodedPrompt
from echocxr.decoding.engine import DecodeConfig, ReportEngine
from echocxr.decoding.results import DecodeEvent, Generation
from echocxr.serving.metrics import Metrics
from echocxr.serving.streaming import StreamState

log = logging.getLogger("echocxr.serving")


class Overloaded(Exception):
    """The queue is full (or the server is stopping): answer 503 rather than queue without bound."""


class Job:
    """One request's sample: its prompt and settings in, its events and result out (on `queue`)."""

    def __init__(self, prompt: EncodedPrompt, cfg: DecodeConfig, loop: asyncio.AbstractEventLoop,
                 stream: StreamState | None = None, request_id: str = ""):
        self.prompt = prompt
        self.cfg = cfg
        self.key = astuple(cfg)  # jobs batch together only when every decode setting is equal
        self.loop = loop
        self.queue: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
        self.stream = stream
        self.request_id = request_id
        self.cancelled = threading.Event()
        self.finished = False  # set by the worker once "done" or "error" was pushed
        self.enqueued = time.perf_counter()
        self.started: float | None = None
        self.batch_size = 0

    def cancel(self) -> None:
        self.cancelled.set()

    def push(self, kind: str, payload: object) -> None:
        """Called from the decode thread: hand one item to the request's coroutine."""
        if kind in ("done", "error"):
            self.finished = True
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, payload))
        except RuntimeError:  # the request's loop is closed (server shutting down): nobody is listening
            pass


class Batcher:
    """Owns the engine's decode thread; `submit` is safe to call from any thread."""

    def __init__(self, engine: ReportEngine, max_batch: int = 32, window_s: float = 0.01, max_queue: int = 1024,
                 metrics: Metrics | None = None):
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.engine = engine
        self.max_batch = max_batch
        self.window_s = max(0.0, window_s)
        self.max_queue = max_queue
        self.metrics = metrics or Metrics()
        self._cond = threading.Condition()
        self._pending: deque[Job] = deque()
        self._active = 0
        self._stopping = False
        self._thread: threading.Thread | None = None

    # ---- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="echocxr-decode", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the running batch, fail what is still queued, join the thread."""
        with self._cond:
            self._stopping = True
            left = list(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        for job in left:
            job.push("error", Overloaded("server is shutting down"))
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # ---- API ---------------------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stopping:
                raise Overloaded("server is shutting down")
            if len(self._pending) >= self.max_queue:
                raise Overloaded(f"server busy: {len(self._pending)} requests queued (limit {self.max_queue})")
            self._pending.append(job)
            self._cond.notify_all()
        self.start()

    def counts(self) -> dict[str, int]:
        """Jobs waiting and jobs in the running batch (both return to 0 when the server is idle)."""
        with self._cond:
            return {"pending": len(self._pending), "active": self._active}

    # ---- worker ------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self._decode(batch)
            except Exception as exc:  # keep serving: fail this batch's requests, not the server
                log.exception("decode batch of %d failed (%s)", len(batch), type(exc).__name__)
                for job in batch:
                    if not job.finished:
                        job.push("error", exc)
            finally:
                with self._cond:
                    self._active = 0

    def _take(self) -> list[Job] | None:
        """Block until a batch is due; return it (all with the oldest job's settings), or None to stop."""
        with self._cond:
            while True:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return None
                deadline = self._pending[0].enqueued + self.window_s
                while len(self._pending) < self.max_batch and not self._stopping:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if self._stopping:
                    return None
                batch, rest = [], deque()
                key = None
                for job in self._pending:
                    if job.cancelled.is_set():
                        self.metrics.inc("cancelled_total")
                        continue  # client left while queued: nobody to answer
                    if key is None:
                        key = job.key
                    if job.key == key and len(batch) < self.max_batch:
                        batch.append(job)
                    else:
                        rest.append(job)
                self._pending = rest
                if batch:
                    self._active = len(batch)
                    return batch

    def _decode(self, batch: list[Job]) -> None:
        now = time.perf_counter()
        for job in batch:
            job.started = now
            job.batch_size = len(batch)
            self.metrics.observe("queue_wait_seconds", now - job.enqueued)
        self.metrics.observe("batch_size", len(batch))
        self.metrics.inc("batches_total")

        def on_event(ev: DecodeEvent) -> None:
            job = batch[ev.sample]
            if ev.kind == "step" and job.stream is not None and not job.cancelled.is_set():
                for kind, payload in job.stream.on_step(ev):
                    job.push(kind, payload)
            elif ev.kind == "done" and ev.generation is not None:
                self._finish(job, ev.generation)

        streaming = any(job.stream is not None for job in batch)
        results = self.engine.generate(
            [job.prompt for job in batch], batch[0].cfg,
            on_event=on_event if streaming else None,
            is_cancelled=lambda i: batch[i].cancelled.is_set(),
        )
        for job, gen in zip(batch, results, strict=True):
            if not job.finished:
                self._finish(job, gen)
        self.metrics.inc("batch_forwards_total", max((g.forwards for g in results), default=0))

    def _finish(self, job: Job, gen: Generation) -> None:
        if gen.stop == "cancelled":
            self.metrics.inc("cancelled_total")
        self.metrics.inc("generated_tokens_total", gen.tokens)
        self.metrics.inc("forwards_total", gen.forwards)
        if job.stream is not None and gen.stop != "cancelled":
            for kind, payload in job.stream.on_done(gen):
                job.push(kind, payload)
        job.push("done", gen)
