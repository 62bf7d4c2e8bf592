"""The built-in model: a small Qwen2.5-VL trained by echocxr on CXR-Phantom (scripts/train_demo_model.sh; scripts/train_builtin_model.sh trains its bilingual block-8 successor)."""

from __future__ import annotations

from pathlib import Path

BUILTIN_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "demo_model"
BUILTIN_NAME = "builtin"  # `--model builtin` (a directory of that name: `--model ./builtin`)


def resolve_model_dir(model: str | Path) -> str:
    """A model argument as a directory: "builtin" names the packaged model, anything else is a path."""
    if str(model) == BUILTIN_NAME:
        return builtin_model_dir()
    return str(model)


def model_dir_or_builtin(model: str | None) -> str:
    """`--model` when given ("builtin" included), else the built-in model."""
    return resolve_model_dir(model) if model else builtin_model_dir()


def builtin_model_dir() -> str:
    """The packaged model's directory, or a one-line error when it is not installed."""
    from echocxr.errors import UserError

    if not (BUILTIN_MODEL_DIR / "config.json").is_file():
        raise UserError(f"no built-in model at {BUILTIN_MODEL_DIR}: pass --model DIR "
                        "(or train the built-in one with scripts/train_builtin_model.sh)")
    return str(BUILTIN_MODEL_DIR)
