"""Per-checkpoint decoding settings, kept in `echocxr.json` next to the weights.

Official ECHO checkpoints have no such file and get the defaults (SDAR-style block-grid prefill);
models trained by echocxr write one (their RAD training saw a causal prompt: response-aligned blocks).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from echocxr.errors import UserError

SETTINGS_FILE = "echocxr.json"
PREFILL_MODES = ("block_grid", "response_aligned")
DECODERS = ("ar", "multistep", "onestep")
REMASKING_STRATEGIES = ("sequential", "low_confidence_static", "low_confidence_dynamic")


@dataclass
class ModelSettings:
    block_length: int = 4
    prefill: str = "block_grid"  # "block_grid" (official checkpoints) | "response_aligned" (echocxr-trained)
    decoder: str = "onestep"  # the decoder this model is meant for
    steps: int = 4  # multistep default
    remasking: str = "low_confidence_dynamic"
    threshold: float = 0.85
    stage: str = ""  # ar | rad | dcd | ... (informational)

    def validate(self) -> ModelSettings:
        if self.prefill not in PREFILL_MODES:
            raise UserError(f"prefill must be one of {PREFILL_MODES}, got {self.prefill!r}")
        if self.decoder not in DECODERS:
            raise UserError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        if self.block_length < 1:
            raise UserError(f"block_length must be >= 1, got {self.block_length}")
        return self

    def save(self, model_dir: str | Path) -> None:
        (Path(model_dir) / SETTINGS_FILE).write_text(json.dumps(asdict(self), indent=1))


def read_settings(model_dir: str | Path) -> ModelSettings:
    path = Path(model_dir) / SETTINGS_FILE
    if not path.is_file():
        return ModelSettings()
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    known = {f.name for f in fields(ModelSettings)}
    return ModelSettings(**{k: v for k, v in data.items() if k in known}).validate()
