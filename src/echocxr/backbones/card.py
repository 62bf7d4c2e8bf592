"""The model card: `MODEL_CARD.md` next to the weights, written by the training script, shown by `echocxr demo --card`.

Markdown rather than JSON: it is read by people (and renders on any code host); what the code needs
(image size, languages, decoders, domain) lives in `echocxr.json` and is repeated here so the two agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from echocxr.backbones.settings import PHANTOM_DOMAIN, read_settings

CARD_FILE = "MODEL_CARD.md"
PHANTOM_LIMITS = (
    "Trained and tested on CXR-Phantom, procedurally rendered images: its reports on real radiographs mean nothing.",
    "Not a medical device; not for clinical use.",
)


def write_model_card(model_dir: str | Path, title: str, summary: str, data: str, recipe: str,
                     metrics: Mapping[str, Mapping[str, float]] | str | None = None,
                     limits: Sequence[str] = (), sections: Mapping[str, str] | None = None) -> Path:
    """Write `model_dir/MODEL_CARD.md` and return its path.

    metrics: {language: {metric: value}} (one table column per language) or ready-made markdown;
    limits: extra lines under "Limits" (a `cxr-phantom` model always gets the phantom-only lines);
    sections: more {heading: markdown} at the end (e.g. "Command" with the script's invocation).
    "Trained for" is filled from the directory's echocxr.json, so write the card after the weights.
    """
    model_dir = Path(model_dir)
    s = read_settings(model_dir)
    trained = [
        f"- stage: {s.stage or 'unknown'}; decoder{'s' if len(s.decoders) != 1 else ''}: "
        f"{', '.join(s.decoders) or 'any'} (default {s.decoder}); block length {s.block_length}",
        f"- languages: {', '.join(s.languages) or 'any'}",
        f"- images: {f'{s.image_size} x {s.image_size} px (inputs are resized to it)' if s.image_size else 'any size'}"
        f"; domain: {s.domain or 'chest X-rays'}",
    ]
    parts = [f"# {title}", summary.strip(), "## Trained for", "\n".join(trained),
             "## Data", data.strip(), "## Recipe", recipe.strip()]
    if metrics:
        parts += ["## Metrics", metrics.strip() if isinstance(metrics, str) else metrics_table(metrics)]
    lines = list(PHANTOM_LIMITS if s.domain == PHANTOM_DOMAIN else ()) + [x for x in limits if x not in PHANTOM_LIMITS]
    if lines:
        parts += ["## Limits", "\n".join(f"- {x}" for x in lines)]
    for heading, body in (sections or {}).items():
        parts += [f"## {heading}", body.strip()]
    path = model_dir / CARD_FILE
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def metrics_table(metrics: Mapping[str, Mapping[str, float]]) -> str:
    """{language: {metric: value}} -> a markdown table, metrics as rows, languages as columns."""
    langs = list(metrics)
    names: list[str] = []
    for per in metrics.values():
        names += [m for m in per if m not in names]

    def cell(v) -> str:
        return f"{v:.2f}" if isinstance(v, float) else ("–" if v is None else str(v))

    rows = ["| metric | " + " | ".join(langs) + " |", "|---" * (len(langs) + 1) + "|"]
    rows += [f"| {m} | " + " | ".join(cell(metrics[lang].get(m)) for lang in langs) + " |" for m in names]
    return "\n".join(rows)


def read_model_card(model_dir: str | Path) -> str | None:
    """The card's markdown, or None when the model has none (e.g. official checkpoints)."""
    path = Path(model_dir) / CARD_FILE
    try:
        return path.read_text(encoding="utf-8") if path.is_file() else None
    except (OSError, UnicodeDecodeError):
        return None
