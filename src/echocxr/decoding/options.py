"""Decode options (the attributes `echocxr report/eval/serve/demo` parse) -> a ReportEngine and a DecodeConfig.

Below the CLI so that library code (`echocxr.eval_generation`) can build an engine the way the verbs do
without importing `echocxr.cli`. `options` is any object with the option attributes, e.g. an argparse
Namespace; None means "the model's own setting".
"""

from __future__ import annotations

from typing import Any

from echocxr.decoding.engine import DecodeConfig, ReportEngine
from echocxr.errors import UserError


def decode_config_from_options(engine: ReportEngine, options: Any) -> DecodeConfig:
    """The engine's default config with the given options applied."""
    return engine.default_config(
        decoder=options.decoder, block_length=options.block_length, steps=options.steps,
        remasking=options.remasking, threshold=options.threshold, prefill=options.prefill,
        fused=False if options.no_fused else None, max_new_tokens=options.max_new_tokens,
        temperature=options.temperature, top_k=options.top_k, top_p=options.top_p, seed=options.seed,
        tie_ratio=getattr(options, "tie_ratio", None), tie_break=getattr(options, "tie_break", None),
        tie_margin=getattr(options, "tie_margin", None),
        refine=getattr(options, "refine", None), lookahead=getattr(options, "lookahead", None),
        lookahead_threshold=getattr(options, "lookahead_threshold", None),
    )


def load_engine(model_dir: str, options: Any) -> ReportEngine:
    """A model directory on `options.device` / `.dtype` / `.attn`, with the fast path unless `.fast` is off."""
    from transformers.utils import logging as hf_logging

    from echocxr.backbones.loading import load_backbone

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    device = resolve_device(options.device)
    engine = ReportEngine(load_backbone(model_dir, device=device, dtype=options.dtype,
                                        attn_implementation=options.attn))
    if getattr(options, "fast", False):
        from echocxr.decoding.fast_engine import FastPath

        engine.fast_path = FastPath(engine, compile=getattr(options, "compile", None))
    return engine


def resolve_device(device: str) -> str:
    """'auto' -> cuda when available, else cpu; a one-line UserError for an unusable device."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but CUDA is not available")
    if not (device == "cpu" or device.startswith("cuda") or device == "mps"):
        raise UserError(f"unknown device {device!r} (use cpu or cuda[:N])")
    return device
