"""The HTTP app: report, OpenAI-compatible chat and streaming endpoints over one batched decode thread.

`create_app(engine, decode_config, ServerConfig(...))` returns a FastAPI app; `echocxr serve` runs it with
uvicorn. Every request gets an id (X-Request-ID, echoed); logs carry ids, endpoints, status codes and timings,
never report text, image bytes or anything read from an image. Uploads stay in memory.
"""

from __future__ import annotations

import asyncio
import contextvars
import hmac
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from echocxr.backbones.prompt import PROMPTS, EncodedPrompt
from echocxr.backbones.settings import DECODERS
from echocxr.clinical.formats import FORMATS, format_from_accept
from echocxr.decoding.confidence import confidence_fields
from echocxr.decoding.engine import DecodeConfig, ReportEngine
from echocxr.decoding.results import Generation
from echocxr.errors import UserError
from echocxr.serving.batcher import Batcher, Job, Overloaded
from echocxr.serving.decode_upload import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_REQUEST_PIXELS,
    ImageTooLarge,
    header_pixels,
    load_image_bytes,
)
from echocxr.serving.examples import example_png, list_examples
from echocxr.serving.metrics import Metrics
from echocxr.serving.protocol import (
    ApiError,
    ReportRequest,
    parse_json,
    report_format,
    report_from_chat,
    report_from_json,
    report_from_multipart,
    report_from_urlencoded,
)
from echocxr.serving.streaming import SSE_HEADERS, StreamState, sse

log = logging.getLogger("echocxr.serving")
STATIC_DIR = Path(__file__).parent / "static"
PUBLIC_PATHS = ("/", "/health", "/favicon.ico", "/examples")  # the page and its phantom examples
PUBLIC_PREFIXES = ("/static/", "/examples/")
ENDPOINTS = ("/", "/health", "/metrics", "/v1/models", "/v1/reports", "/v1/reports/stream",
             "/v1/chat/completions", "/examples")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


@dataclass
class ServerConfig:
    """Server limits and batching; the defaults suit one GPU serving a 7B model."""

    max_batch: int = 32
    batch_window_ms: float = 10.0
    token: str | None = None  # bearer token required on /v1/* and /metrics when set
    max_views: int = 4
    max_upload_bytes: int = 32 * 1024 * 1024
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS  # decoded pixels of all a request's views (413 above)
    decode_concurrency: int = 1  # requests decoding images at once: peak decode memory ~ this x one request's
    max_prompt_chars: int = 2000
    max_prompt_tokens: int = 16384
    max_queue: int = 1024
    model_name: str = "echocxr"
    keepalive_s: float = 15.0  # SSE comment lines while a streamed request waits in the queue
    idle_timeout_s: float = 5.0  # a keep-alive connection idle this long between requests is closed
    head_timeout_s: float = 10.0  # a connection must send a whole request head within this (then closed)
    body_timeout_s: float = 60.0  # the whole request body must arrive within this (else 408)


class ReportService:
    """Glue between HTTP handlers and the batcher: builds jobs, waits for them, counts open streams."""

    def __init__(self, engine: ReportEngine, decode_config: DecodeConfig, config: ServerConfig, metrics: Metrics):
        self.engine = engine
        self.base = decode_config.validate()
        self.config = config
        self.metrics = metrics
        self.batcher = Batcher(engine, config.max_batch, config.batch_window_ms / 1000.0, config.max_queue, metrics)
        self.open_streams = 0
        self.waiting = 0  # non-streaming requests waiting for their result
        self._encode_lock = threading.Lock()  # tokenizer + image processor: one request at a time
        # Decoded views are large (3 bytes a pixel as RGB, more while decoding): a few dedicated threads decode,
        # one request each, so few requests hold them and the allocator reuses one arena's memory per thread
        # (in the shared thread pool every thread's arena kept its own peak).
        self._decoder = ThreadPoolExecutor(max(1, config.decode_concurrency), thread_name_prefix="echocxr-images")
        self._pixels_lock = threading.Lock()
        self.decoded_pixels = 0  # pixels of decoded views held right now, and the most ever held at once
        self.peak_decoded_pixels = 0

    def counts(self) -> dict[str, int]:
        return {**self.batcher.counts(), "streams": self.open_streams, "waiting": self.waiting}

    def decode_config(self, overrides: dict) -> DecodeConfig:
        limit = self.base.max_new_tokens
        if overrides.get("max_new_tokens") is not None and not 1 <= overrides["max_new_tokens"] <= limit:
            raise ApiError(400, f"max_new_tokens must be in 1..{limit} (the server's limit)")
        cfg = replace(self.base, **overrides)
        if cfg.decoder != "multistep" and cfg.lookahead:  # the request left multistep: look-ahead is multistep's
            cfg = replace(cfg, lookahead=0)
        if cfg.decoder == "multistep" and self.base.decoder != "multistep":  # the request chose multistep
            cfg = self.engine.with_multistep_defaults(cfg, overrides)
        elif "steps" not in overrides and cfg.decoder == "multistep":
            cfg.steps = min(cfg.steps, cfg.block_length)
        return cfg.validate()

    async def submit(self, req: ReportRequest, stream: bool, steps: bool = False) -> Job:
        c = self.config
        if len(req.images) > c.max_views:
            raise ApiError(400, f"too many views: {len(req.images)} images (at most {c.max_views} per study)")
        if not req.images and self.engine.is_vision:
            raise ApiError(400, "no image: send one or more views of the study")
        if req.instruction is not None and len(req.instruction) > c.max_prompt_chars:
            raise ApiError(400, f"prompt too long: {len(req.instruction)} characters (limit {c.max_prompt_chars})")
        cfg = self.decode_config(req.overrides)
        ctx = contextvars.copy_context()  # the request id, for anything the decode logs
        prompt = await asyncio.get_running_loop().run_in_executor(self._decoder, ctx.run, self._encode, req)
        if prompt.length > c.max_prompt_tokens:
            raise ApiError(400, f"prompt too long: {prompt.length} tokens (limit {c.max_prompt_tokens}); "
                                "send fewer or smaller views")
        bb = self.engine.bb
        state = (StreamState(bb.tokenizer, bb.mask_token_id, bb.eos_token_ids, cfg.max_new_tokens, steps=steps)
                 if stream else None)
        job = Job(prompt, cfg, asyncio.get_running_loop(), state, request_id_var.get())
        try:
            self.batcher.submit(job)
        except Overloaded as exc:
            raise ApiError(503, str(exc), "overloaded") from None
        return job

    def _encode(self, req: ReportRequest) -> EncodedPrompt:
        """Decode the views and build the prompt: within the request's pixel budget, checked from the headers
        before anything is decoded; runs on one of the `decode_concurrency` image threads."""
        c = self.config
        sizes = [header_pixels(data) for data in req.images]
        if sum(sizes) > c.max_request_pixels:
            raise ImageTooLarge(f"study too large: {len(sizes)} views of {sum(sizes) / 1e6:.1f} MP in all "
                                f"(limit {c.max_request_pixels / 1e6:.1f} MP per request)")
        held = 0
        try:
            images = []
            for i, data in enumerate(req.images):
                try:
                    images.append(load_image_bytes(data, c.max_image_pixels))
                except UserError as exc:
                    if len(req.images) == 1:
                        raise
                    raise type(exc)(f"view {i + 1} of {len(req.images)}: {exc}") from None
                held += images[-1].width * images[-1].height
                self._count_pixels(images[-1].width * images[-1].height)
            req.images = []  # drop the upload bytes as soon as they are decoded
            with self._encode_lock:
                return self.engine.encode(images or None, lang=req.lang, instruction=req.instruction)
        finally:
            self._count_pixels(-held)

    def close(self) -> None:
        self._decoder.shutdown(wait=True, cancel_futures=True)

    def _count_pixels(self, delta: int) -> None:
        with self._pixels_lock:
            self.decoded_pixels += delta
            self.peak_decoded_pixels = max(self.peak_decoded_pixels, self.decoded_pixels)

    async def result(self, job: Job, request: Request) -> Generation | None:
        """Wait for a job's Generation; None (and the job cancelled) if the client disconnects first."""
        self.waiting += 1
        gone = asyncio.ensure_future(_client_gone(request))
        getter: asyncio.Future | None = None
        try:
            while True:
                getter = asyncio.ensure_future(job.queue.get())
                done, _ = await asyncio.wait({getter, gone}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    return None
                kind, payload = getter.result()
                if kind == "done":
                    return payload
                if kind == "error":
                    raise _engine_error(payload)
        finally:
            self.waiting -= 1
            gone.cancel()
            if getter is not None:
                getter.cancel()
            job.cancel()  # no-op once finished; frees the batch row if the client left

    async def events(self, job: Job) -> AsyncIterator[tuple[str, object]]:
        """A job's (kind, payload) items until done/error, with ('ping', None) while idle.

        The job is cancelled when the consumer stops early (client disconnect cancels the response task).
        """
        self.open_streams += 1
        try:
            while True:
                try:
                    kind, payload = await asyncio.wait_for(job.queue.get(), self.config.keepalive_s)
                except TimeoutError:
                    yield "ping", None
                    continue
                yield kind, payload
                if kind in ("done", "error"):
                    return
        finally:
            self.open_streams -= 1
            job.cancel()


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the request body has already been read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _engine_error(payload: object) -> ApiError:
    if isinstance(payload, Overloaded):
        return ApiError(503, str(payload), "overloaded")
    if isinstance(payload, UserError):
        return ApiError(400, str(payload))
    return ApiError(500, "internal error while decoding", "server_error")


def report_stats(job: Job, gen: Generation, t_start: float) -> dict:
    now = time.perf_counter()
    started = job.started or job.enqueued
    return {
        **gen.stats(),
        "tps": gen.tokens / gen.decode_s if gen.decode_s > 0 else 0.0,
        "prompt_tokens": job.prompt.length,
        "batch_size": job.batch_size,
        "queue_s": started - job.enqueued,
        "latency_s": now - t_start,
    }


def _trained_for(engine: ReportEngine) -> dict:
    """What the model was trained for (its echocxr.json): the page marks the rest; empty lists = any."""
    s = engine.bb.settings
    return {"trained_decoders": list(s.decoders), "trained_languages": list(s.languages),
            "image_size": s.image_size, "domain": s.domain}


def _sections(text: str) -> dict:
    from echocxr.data.sections import split_report

    s = split_report(text)
    return {"findings": s.findings, "impression": s.impression}


def error_body(message: str, type_: str) -> dict:
    return {"error": {"message": message, "type": type_}}


# bodies are parsed by hand (multipart in memory, JSON strictly); this documents them for /docs
_REPORT_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "images": {"type": "array", "items": {"type": "string", "format": "binary"},
                   "description": "the study's views: PNG, JPEG or DICOM"},
        "lang": {"type": "string", "enum": list(PROMPTS)},
        "decoder": {"type": "string", "enum": list(DECODERS)},
        "max_new_tokens": {"type": "integer"}, "instruction": {"type": "string"},
        "format": {"type": "string", "enum": list(FORMATS)}}, "required": ["images"]}},
    "application/json": {"schema": {"type": "object", "properties": {
        "images": {"type": "array", "items": {"type": "string"}, "description": "base64 or data: URIs"},
        "lang": {"type": "string", "enum": list(PROMPTS)},
        "decoder": {"type": "string", "enum": list(DECODERS)},
        "max_new_tokens": {"type": "integer"}, "steps": {"type": "integer"}, "threshold": {"type": "number"},
        "temperature": {"type": "number"}, "seed": {"type": "integer"}, "instruction": {"type": "string"},
        "stream": {"type": "boolean"}, "format": {"type": "string", "enum": list(FORMATS)}},
        "required": ["images"]}},
}}}
_CHAT_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["messages"], "properties": {
        "messages": {"type": "array", "items": {"type": "object"},
                     "description": "user content parts: text and image_url with a data: URI"},
        "stream": {"type": "boolean"}, "max_tokens": {"type": "integer"}, "lang": {"type": "string"},
        "decoder": {"type": "string"}}}}}}}


# ---- middleware -------------------------------------------------------------------------------------
class RequestContext:
    """Pure ASGI middleware (streaming-safe): request id, bearer auth, access log line, request metrics."""

    def __init__(self, app, config: ServerConfig, metrics: Metrics):
        self.app = app
        self.config = config
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        rid = headers.get("x-request-id", "")
        rid = rid if _REQUEST_ID.match(rid) else uuid.uuid4().hex
        token = request_id_var.set(rid)
        scope.setdefault("state", {})["request_id"] = rid
        t0 = time.perf_counter()
        status = [0]
        note = ""

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = rid
            await send(message)

        try:
            if not self._authorized(scope["path"], headers):
                self.metrics.inc("errors_total", labels={"type": "authentication_error"})
                resp = JSONResponse(error_body("missing or invalid bearer token", "authentication_error"),
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await resp(scope, receive, send_with_id)
                return
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:  # the client hung up before its request was read: nobody to answer
            status[0] = status[0] or 499
            note = " (client disconnected during the upload)"
        except Exception as exc:  # a bug: answered here, inside the request id's scope, not by Starlette
            log.error("request_id=%s internal error %s", rid, type(exc).__name__)
            log.debug("request_id=%s traceback", rid, exc_info=True)  # tracebacks can quote request data
            self.metrics.inc("errors_total", labels={"type": "server_error"})
            if status[0]:  # the response had begun (a stream): it ends cut short, the server closes the connection
                status[0] = 500
            else:
                resp = JSONResponse(error_body("internal server error", "server_error"), status_code=500)
                await resp(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - t0
            endpoint = _endpoint_label(scope)
            code = status[0] or 499  # no response started: the client went away
            if code == 499:
                self.metrics.inc("client_disconnects_total", labels={"endpoint": endpoint})
            self.metrics.inc("requests_total", labels={"endpoint": endpoint, "code": str(code)})
            if endpoint not in ("static", "/metrics", "/health"):
                self.metrics.observe("request_latency_seconds", elapsed, labels={"endpoint": endpoint})
            log.info("request_id=%s %s %s status=%d ms=%.1f%s", rid, scope["method"], endpoint, code, elapsed * 1e3,
                     note)
            request_id_var.reset(token)

    def _authorized(self, path: str, headers: dict[str, str]) -> bool:
        if not self.config.token or path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            return True
        auth = headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.config.token.encode())


# ---- app ----------------------------------------------------------------------------------------------
def create_app(engine: ReportEngine, decode_config: DecodeConfig | None = None,
               config: ServerConfig | None = None) -> FastAPI:
    """Build the app; the decode thread starts with the app (or on the first request) and stops with it."""
    config = config or ServerConfig()
    metrics = Metrics()
    service = ReportService(engine, decode_config or engine.default_config(), config, metrics)
    metrics.gauge("queue_depth", "requests waiting for a batch", lambda: service.batcher.counts()["pending"])
    metrics.gauge("active_samples", "samples in the running batch", lambda: service.batcher.counts()["active"])
    metrics.gauge("open_streams", "streaming responses in progress", lambda: service.open_streams)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.batcher.start()
        yield
        await run_in_threadpool(service.batcher.stop)
        await run_in_threadpool(service.close)

    app = FastAPI(title="echocxr", version="0.1.0", lifespan=lifespan, docs_url="/docs", redoc_url=None,
                  summary="Chest X-ray report generation with one-step block diffusion")
    app.state.service = service
    app.state.config = config  # uvicorn_config reads the connection timeouts here
    app.state.metrics = metrics
    app.add_middleware(RequestContext, config=config, metrics=metrics)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    def fail(status: int, message: str, type_: str, headers: dict[str, str] | None = None) -> JSONResponse:
        metrics.inc("errors_total", labels={"type": type_})
        log.info("request_id=%s error status=%d type=%s", request_id_var.get(), status, type_)
        return JSONResponse(error_body(message, type_), status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return fail(exc.status, exc.message, exc.type, exc.headers)

    @app.exception_handler(UserError)
    async def _user_error(request: Request, exc: UserError) -> JSONResponse:
        if isinstance(exc, ImageTooLarge):
            return fail(413, str(exc), "request_too_large")
        return fail(400, str(exc), "invalid_request_error")

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return fail(422, f"invalid {where}: {first.get('msg', 'bad value')}", "invalid_request_error")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request_error")
        return fail(exc.status_code, str(exc.detail), kind)

    async def read_request(request: Request, chat: bool = False) -> ReportRequest:
        body = await _read_body(request, config.max_upload_bytes, config.body_timeout_s)
        ctype = request.headers.get("content-type", "application/json")
        mime = ctype.split(";")[0].strip().lower()  # the boundary parameter is case-sensitive: keep ctype as is
        if chat or mime in ("application/json", "text/plain"):
            data = parse_json(body)
            return report_from_chat(data) if chat else report_from_json(data)
        if mime == "multipart/form-data":
            return report_from_multipart(body, ctype)
        if mime == "application/x-www-form-urlencoded":
            return report_from_urlencoded(body)
        raise ApiError(415, f"unsupported content type {mime!r} "
                            "(use multipart/form-data or application/json)", "unsupported_media_type")

    # ---- pages and info ----
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/health")
    async def health() -> dict:
        cfg = service.base
        return {"status": "ok", "model": config.model_name, "vision": engine.is_vision, "auth": bool(config.token),
                "decoder": cfg.decoder, "block_length": cfg.block_length, "max_new_tokens": cfg.max_new_tokens,
                "decoders": list(DECODERS), "languages": list(PROMPTS), "max_views": config.max_views,
                "max_batch": config.max_batch, **_trained_for(engine), **service.counts()}

    app.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)  # load balancers' probe

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": config.model_name, "object": "model", "owned_by": "echocxr"}]}

    @app.get("/examples")
    async def examples() -> dict:
        return {"examples": list_examples()}

    @app.get("/examples/{name}.png", include_in_schema=False)
    async def example(name: str) -> Response:
        png = await run_in_threadpool(example_png, name)
        if png is None:
            raise ApiError(404, f"no example named {name!r}", "not_found")
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    # ---- reports ----
    model_label = _model_label(engine, config)

    @app.post("/v1/reports", openapi_extra=_REPORT_BODY)
    async def reports(request: Request, stream: bool = False, steps: bool = False,
                      format_: str | None = Query(None, alias="format")) -> Response:
        """One study (one or more views) -> {report, findings, impression, stats}; stream=true for SSE;
        format (query or body field, else the Accept header) = text | json | fhir | dicom-sr."""
        t0 = time.perf_counter()
        req = await read_request(request)
        fmt = _report_format(format_, req, request)
        if stream or req.stream:
            if fmt != "json":
                raise ApiError(400, f"format {fmt!r} is for whole reports: a stream (stream=true) sends JSON events")
            return await _report_stream(req, steps, t0)
        sources = _dicom_sources(req) if fmt in ("fhir", "dicom-sr") else ()
        job = await service.submit(req, stream=False)
        gen = await service.result(job, request)
        if gen is None:
            return Response(status_code=499)
        if fmt != "json":
            return await run_in_threadpool(_clinical_response, fmt, gen, req.lang, job, sources, model_label)
        return JSONResponse({"id": request_id_var.get(), "object": "report", "model": config.model_name,
                             "report": gen.text, **_sections(gen.text), "stats": report_stats(job, gen, t0),
                             "warnings": gen.warnings, **confidence_fields(engine.bb.tokenizer, gen)})

    @app.post("/v1/reports/stream", openapi_extra=_REPORT_BODY)
    async def reports_stream(request: Request, steps: bool = False,
                             format_: str | None = Query(None, alias="format")) -> Response:
        """SSE: `block` events as blocks are committed (`step` events too with steps=true), then `done`."""
        t0 = time.perf_counter()
        req = await read_request(request)
        fmt = report_format(format_) or req.format
        if fmt not in (None, "json"):
            raise ApiError(400, f"format {fmt!r} is for whole reports: a stream sends JSON events")
        return await _report_stream(req, steps, t0)

    async def _report_stream(req: ReportRequest, steps: bool, t0: float) -> StreamingResponse:
        job = await service.submit(req, stream=True, steps=steps)  # errors here are plain JSON responses
        rid = request_id_var.get()

        async def body() -> AsyncIterator[str]:
            async for kind, payload in service.events(job):
                if kind == "ping":
                    yield ": keep-alive\n\n"
                elif kind in ("step", "block"):
                    yield sse(payload, kind)
                elif kind == "done":
                    gen = payload
                    yield sse({"id": rid, "report": gen.text, **_sections(gen.text),
                               "stats": report_stats(job, gen, t0), "warnings": gen.warnings,
                               **confidence_fields(engine.bb.tokenizer, gen)}, "done")
                else:
                    err = _engine_error(payload)
                    metrics.inc("errors_total", labels={"type": err.type})
                    yield sse(error_body(err.message, err.type), "error")

        return _JobStream(job, body())

    # ---- OpenAI-compatible chat ----
    @app.post("/v1/chat/completions", openapi_extra=_CHAT_BODY)
    async def chat_completions(request: Request) -> Response:
        """OpenAI chat completion: images as image_url data URIs; stream=true for chat.completion.chunk SSE."""
        t0 = time.perf_counter()
        req = await read_request(request, chat=True)
        job = await service.submit(req, stream=req.stream)
        cid = f"chatcmpl-{request_id_var.get()}"
        created = int(time.time())

        def usage(gen: Generation) -> dict:
            return {"prompt_tokens": job.prompt.length, "completion_tokens": gen.tokens,
                    "total_tokens": job.prompt.length + gen.tokens}

        def chunk(delta: dict, finish: str | None = None) -> str:
            return sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": config.model_name,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

        if not req.stream:
            gen = await service.result(job, request)
            if gen is None:
                return Response(status_code=499)
            return JSONResponse({
                "id": cid, "object": "chat.completion", "created": created, "model": config.model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": gen.text},
                             "finish_reason": "stop" if gen.stop == "eos" else "length"}],
                "usage": usage(gen), "stats": report_stats(job, gen, t0), "warnings": gen.warnings,
            })

        async def body() -> AsyncIterator[str]:
            yield chunk({"role": "assistant", "content": ""})
            async for kind, payload in service.events(job):
                if kind == "ping":
                    yield ": keep-alive\n\n"
                elif kind == "block" and payload["text"]:
                    yield chunk({"content": payload["text"]})
                elif kind == "done":
                    yield chunk({}, "stop" if payload.stop == "eos" else "length")
                    if req.include_usage:
                        yield sse({"id": cid, "object": "chat.completion.chunk", "created": created,
                                   "model": config.model_name, "choices": [], "usage": usage(payload)})
                elif kind == "error":
                    err = _engine_error(payload)
                    metrics.inc("errors_total", labels={"type": err.type})
                    yield sse(error_body(err.message, err.type))
            yield sse("[DONE]")

        return _JobStream(job, body())

    return app


def _report_format(query: str | None, req: ReportRequest, request: Request) -> str:
    """The format a /v1/reports request asks for: ?format=, else its `format` field, else its Accept header
    (application/fhir+json, application/dicom), else JSON."""
    return report_format(query) or req.format or format_from_accept(request.headers.get("accept")) or "json"


def _dicom_sources(req: ReportRequest) -> tuple:
    """Headers of the request's DICOM views, read before the decode drops the upload bytes."""
    from echocxr.clinical.sources import headers_from_bytes

    return headers_from_bytes(req.images)


def _model_label(engine: ReportEngine, config: ServerConfig) -> str:
    from echocxr.clinical.record import model_label

    path = getattr(engine.bb, "path", "")
    return model_label(path) if path else config.model_name


def _clinical_response(fmt: str, gen: Generation, lang: str, job: Job, sources: tuple, model: str) -> Response:
    """A finished report as text, a FHIR bundle or a DICOM SR (built off the event loop: validation costs)."""
    from echocxr.clinical.formats import render
    from echocxr.clinical.record import ClinicalReport, describe_decoder

    out = render(fmt, ClinicalReport(gen.text, lang, model, describe_decoder(job.cfg), sources))
    return Response(out.body, media_type=out.media_type)


class _JobStream(StreamingResponse):
    """An SSE response that cancels its job however it ends, even if the client left before the first byte."""

    def __init__(self, job: Job, content: AsyncIterator[str]):
        super().__init__(content, media_type="text/event-stream", headers=SSE_HEADERS)
        self.job = job

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel()


def _endpoint_label(scope) -> str:
    """A bounded label set for metrics: the matched route, never the raw path."""
    path = getattr(scope.get("route"), "path", None)
    if path is None or path == "/static":
        return "static" if scope["path"].startswith("/static/") else "other"
    if path.startswith("/examples"):
        return "/examples"
    return path if path in ENDPOINTS else "other"


async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes (before it is all read), and
    with 408 (connection closed) when it has not all arrived within `timeout_s` (a trickling client)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"upload too large: {int(declared)} bytes (limit {limit})", "request_too_large")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"upload too large: over {limit} bytes", "request_too_large")
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(408, f"upload too slow: the request body did not arrive within {timeout_s:g} s "
                            f"({size} bytes received)", "request_timeout", {"Connection": "close"}) from None
    return b"".join(chunks)
