"""Per-checkpoint decoding settings, kept in `echocxr.json` next to the weights.

Official ECHO checkpoints have no such file and get the defaults (SDAR-style block-grid prefill);
models trained by echocxr write one (their RAD training saw a causal prompt: response-aligned blocks).
It also records what the model was trained for (image size, languages, decoders, image domain), so that
inputs can be fitted to it and requests outside it can be warned about. Older files without these fields
load with the "anything goes" defaults.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from echocxr.errors import UserError

SETTINGS_FILE = "echocxr.json"
PREFILL_MODES = ("block_grid", "response_aligned")
DECODERS = ("ar", "multistep", "onestep")
# low_entropy_dynamic: dParallel/d3LLM decode by entropy (nats), not confidence; `threshold` is then the entropy bound
TIE_BREAKS = ("lowest_id", "one_step", "image")  # greedy near-tie rules (decoding.engine.DecodeConfig.tie_break)
DEFAULT_TIE_MARGIN = 2.0  # the image tie-break's bound, in nats (DecodeConfig.tie_margin; STUDY.md §5)
DEFAULT_TIE_BREAK = TIE_BREAKS[0]
REMASKING_STRATEGIES = ("sequential", "low_confidence_static", "low_confidence_dynamic", "low_entropy_dynamic")
DOMAINS = ("", "cxr-phantom")  # "": any chest X-ray (real checkpoints)
PHANTOM_DOMAIN = "cxr-phantom"
# multistep on a model whose own setting is one step: one token per forward at worst (steps = L), more
# whenever the model is confident, as the paper's teacher decodes
MULTISTEP_FALLBACK_REMASKING = "low_confidence_dynamic"
MULTISTEP_FALLBACK_THRESHOLD = 0.9
# d3LLM's multi-block (look-ahead) decoding (decoding.engine.ReportEngine._decode_blocks_lookahead): up to
# `lookahead` blocks after the current one are decoded in the same forward; the next one joins once the last
# open block has at least `lookahead_threshold` of its positions committed (d3LLM's `block_add_threshold`,
# 0.1 in its released LLaDA and Dream settings). d3LLM's code has no cap on the number of open blocks: its
# baseline here gets MAX_LOOKAHEAD, more blocks than a report's canvas holds ahead of the current one.
MAX_LOOKAHEAD = 64


def check_lookahead(lookahead: object, threshold: object) -> None:
    """The look-ahead's ranges, for a model's settings and a decode call alike."""
    if not isinstance(lookahead, int) or isinstance(lookahead, bool) or not 0 <= lookahead <= MAX_LOOKAHEAD:
        raise UserError(f"lookahead must be a whole number of blocks in 0..{MAX_LOOKAHEAD}, got {lookahead!r}")
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0.0 <= threshold <= 1.0:
        raise UserError(f"lookahead threshold must be in [0, 1], got {threshold!r}")


def check_tie_margin(margin: object, what: str = "tie margin") -> None:
    """The image tie-break's margin range, for a decode call and a training config's teacher alike."""
    if isinstance(margin, bool) or not isinstance(margin, int | float) or not 0.0 <= margin <= 100.0:  # NaN too
        raise UserError(f"{what} must be in [0, 100] nats, got {margin!r}")


DEFAULT_LOOKAHEAD_THRESHOLD = 0.1
LOOKAHEAD_REMASKING = ("low_confidence_dynamic", "low_entropy_dynamic")  # a look-ahead block commits by threshold


@dataclass
class ModelSettings:
    block_length: int = 4
    prefill: str = "block_grid"  # "block_grid" (official checkpoints) | "response_aligned" (echocxr-trained)
    decoder: str = "onestep"  # the decoder this model is meant for
    steps: int = 4  # multistep default
    remasking: str = "low_confidence_dynamic"
    threshold: float = 0.85
    stage: str = ""  # ar | rad | dcd | ... (informational)
    image_size: int = 0  # square side (px) the model was trained at; inputs are resized to it; 0 = as given
    languages: list[str] = field(default_factory=list)  # report languages it was trained for; empty = any
    decoders: list[str] = field(default_factory=list)  # decoders it was trained for; empty = any
    domain: str = ""  # "cxr-phantom": trained on CXR-Phantom images only; "" = any chest X-ray
    lookahead: int = 0  # multistep: extra blocks decoded in the same forward (d3LLM's multi-block decoding)
    lookahead_threshold: float = DEFAULT_LOOKAHEAD_THRESHOLD  # share of a block committed before the next joins

    def validate(self) -> ModelSettings:
        if self.prefill not in PREFILL_MODES:
            raise UserError(f"prefill must be one of {PREFILL_MODES}, got {self.prefill!r}")
        if self.decoder not in DECODERS:
            raise UserError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        if self.block_length < 1:
            raise UserError(f"block_length must be >= 1, got {self.block_length}")
        if not isinstance(self.image_size, int) or isinstance(self.image_size, bool) or self.image_size < 0:
            raise UserError(f"image_size must be an integer >= 0, got {self.image_size!r}")
        for name in ("languages", "decoders"):
            value = getattr(self, name)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise UserError(f"{name} must be a list of strings, got {value!r}")
        bad = [d for d in self.decoders if d not in DECODERS]
        if bad:
            raise UserError(f"decoders must be among {DECODERS}, got {bad[0]!r}")
        if self.domain not in DOMAINS:
            raise UserError(f"domain must be one of {DOMAINS}, got {self.domain!r}")
        check_lookahead(self.lookahead, self.lookahead_threshold)
        return self

    def save(self, model_dir: str | Path) -> None:
        (Path(model_dir) / SETTINGS_FILE).write_text(json.dumps(asdict(self), indent=1))

    def multistep_defaults(self, block_length: int) -> dict:
        """steps/remasking/threshold (and look-ahead) for multistep when the caller set none of them.

        A one-step model's own `steps: 1` would make multistep a one-step decode under another name, so
        such a model gets L steps with dynamic low-confidence remasking instead.
        """
        ahead = {"lookahead": self.lookahead, "lookahead_threshold": self.lookahead_threshold}
        if self.steps > 1:
            return {"steps": min(self.steps, block_length), "remasking": self.remasking,
                    "threshold": self.threshold, **ahead}
        return {"steps": block_length, "remasking": MULTISTEP_FALLBACK_REMASKING,
                "threshold": MULTISTEP_FALLBACK_THRESHOLD, **ahead}

    def decoder_warning(self, decoder: str) -> str | None:
        """One line when `decoder` is not one this model was trained for (None when it is, or unknown)."""
        if not self.decoders or decoder in self.decoders:
            return None
        return f"this model was trained for {'/'.join(self.decoders)} decoding, not {decoder}: its reports may be worse"

    def language_warning(self, lang: str) -> str | None:
        """One line when `lang` is not a report language this model was trained for."""
        if not self.languages or lang in self.languages:
            return None
        return f"this model was trained on {'/'.join(self.languages)} reports only, not {lang!r}: expect word salad"


def read_settings(model_dir: str | Path) -> ModelSettings:
    path = Path(model_dir) / SETTINGS_FILE
    if not path.is_file():
        return ModelSettings()
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"cannot read {path}: expected a JSON object")
    known = {f.name for f in fields(ModelSettings)}
    try:
        return ModelSettings(**{k: v for k, v in data.items() if k in known}).validate()
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
