"""The built-in model's engine, loaded once per test process (the CLI and DICOM node tests share it)."""

from __future__ import annotations

import functools
from types import SimpleNamespace


@functools.lru_cache(maxsize=1)
def builtin_engine():
    from echocxr.backbones.builtin import builtin_model_dir
    from echocxr.decoding.options import load_engine

    return load_engine(builtin_model_dir(), SimpleNamespace(device="cpu", dtype="auto", attn="sdpa", fast=True,
                                                            compile=False))
