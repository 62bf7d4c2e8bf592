"""The built-in model: a small Qwen2.5-VL trained by echocxr on CXR-Phantom (scripts/train_demo_model.sh)."""

from __future__ import annotations

from pathlib import Path

BUILTIN_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "demo_model"


def model_dir_or_builtin(model: str | None) -> str:
    """`--model` when given, else the built-in model (a one-line error when it is not installed)."""
    from echocxr.errors import UserError

    if model:
        return model
    if not (BUILTIN_MODEL_DIR / "config.json").is_file():
        raise UserError(f"no built-in model at {BUILTIN_MODEL_DIR}: pass --model DIR "
                        "(or train the built-in one with scripts/train_demo_model.sh)")
    return str(BUILTIN_MODEL_DIR)
