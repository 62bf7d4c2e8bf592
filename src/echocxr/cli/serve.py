"""`echocxr serve`: the HTTP server (reports, OpenAI-compatible chat, SSE streaming, metrics, web page)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys

from echocxr.cli.report import add_decode_arguments, decode_config_from_args, load_engine
from echocxr.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model directory (ECHO, ECHO-Base, Qwen2.5-VL, echocxr-trained) or 'builtin' "
                   "(the default)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=32, help="most requests decoded together in one batch")
    p.add_argument("--batch-window-ms", type=float, default=10.0,
                   help="how long the oldest queued request waits for others to join its batch")
    p.add_argument("--token", default=os.environ.get("ECHOCXR_API_TOKEN"),
                   help="require 'Authorization: Bearer TOKEN' on /v1/* and /metrics "
                        "(default: $ECHOCXR_API_TOKEN; prefer the variable, arguments show in ps)")
    p.add_argument("--max-views", type=int, default=4, help="images per study")
    p.add_argument("--max-upload-mb", type=float, default=32.0, help="request body limit (413 above it)")
    p.add_argument("--max-image-mp", type=float, default=50.0, help="megapixels per uploaded image (413 above it)")
    p.add_argument("--max-request-mp", type=float, default=64.0,
                   help="megapixels of all views of one request together (413 above it)")
    p.add_argument("--decode-concurrency", type=int, default=1,
                   help="requests decoding their images at once (peak decode memory grows with it)")
    p.add_argument("--max-queue", type=int, default=1024, help="queued requests before answering 503")
    p.add_argument("--idle-timeout", type=float, default=5.0, metavar="S",
                   help="close a keep-alive connection idle this many seconds between requests")
    p.add_argument("--head-timeout", type=float, default=10.0, metavar="S",
                   help="close a connection that has not sent a whole request head within S seconds")
    p.add_argument("--body-timeout", type=float, default=60.0, metavar="S",
                   help="answer 408 when a request body has not all arrived within S seconds")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    add_decode_arguments(p)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from echocxr.serving.app import ServerConfig, create_app
    from echocxr.serving.server import uvicorn_config

    if not 1 <= args.max_batch <= 1024:
        raise UserError(f"--max-batch must be in 1..1024, got {args.max_batch}")
    if args.batch_window_ms < 0 or args.max_upload_mb <= 0 or args.max_image_mp <= 0 or args.max_views < 1:
        raise UserError("--batch-window-ms must be >= 0; --max-upload-mb, --max-image-mp, --max-views > 0")
    if args.max_request_mp <= 0 or args.decode_concurrency < 1:
        raise UserError("--max-request-mp must be > 0 and --decode-concurrency >= 1")
    if min(args.idle_timeout, args.head_timeout, args.body_timeout) <= 0:
        raise UserError("--idle-timeout, --head-timeout and --body-timeout must be > 0 seconds")
    if not _is_loopback(args.host) and not args.token:
        print(f"echocxr serve: warning: listening on {args.host} without --token: anyone who can reach it "
              "can use it", file=sys.stderr)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from echocxr.backbones.builtin import model_dir_or_builtin
    from echocxr.serving.server import bind_socket

    args.model = model_dir_or_builtin(args.model)
    try:  # bound now, before the model loads (a busy port fails at once); uvicorn then serves on it
        sock = bind_socket(args.host, args.port)
    except OSError as exc:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc} "
                        "(another server there? choose another --port)") from None
    engine = load_engine(args.model, args)
    cfg = decode_config_from_args(engine, args).validate()
    config = ServerConfig(
        max_batch=args.max_batch, batch_window_ms=args.batch_window_ms, token=args.token or None,
        max_views=args.max_views, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_image_pixels=int(args.max_image_mp * 1_000_000), max_queue=args.max_queue,
        max_request_pixels=int(args.max_request_mp * 1_000_000), decode_concurrency=args.decode_concurrency,
        model_name=os.path.basename(os.path.normpath(args.model)) or "echocxr",
        idle_timeout_s=args.idle_timeout, head_timeout_s=args.head_timeout, body_timeout_s=args.body_timeout,
    )
    app = create_app(engine, cfg, config)
    print(f"echocxr serve: {config.model_name} ({cfg.decoder}, block {cfg.block_length}) on "
          f"http://{args.host}:{args.port}/", file=sys.stderr)
    uvicorn.Server(uvicorn_config(app, args.host, args.port, args.log_level)).run(sockets=[sock])
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
