"""Write the built-in model's MODEL_CARD.md from a run's evaluation summaries (called by train_builtin_model.sh).

    python scripts/write_builtin_card.py RUN_DIR MODEL_DIR STAGE_DIR...   (the model's stages, in training order)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from echocxr.backbones.card import write_model_card
from echocxr.backbones.settings import DEFAULT_TIE_BREAK, DEFAULT_TIE_MARGIN

ROWS = ("ar",) + tuple(f"{r}-b{L}" for L in (4, 8)
                       for r in ("rad-multistep", "rad-sequential", "rad-native-onestep", "dcd-onestep"))
METRICS = (("tpf", "TPF"), ("rouge_l", "ROUGE-L"), ("finding_f1_micro", "finding F1 micro"),
           ("finding_f1_macro", "finding F1 macro"), ("report_validity", "report validity"),
           ("sentence_validity", "sentence validity"))
LANGUAGES = (("en", "English"), ("zh", "Chinese"))


def _summary(run: Path, row: str, lang: str) -> dict | None:
    """One evaluation's summary.json as train_builtin_model.sh names it, or None when it was not run."""
    path = run / "eval" / f"{row}-{lang}" / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def table(run: Path, lang: str) -> str:
    lines = ["| model | " + " | ".join(h for _, h in METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for row in ROWS:
        s = _summary(run, row, lang)
        if s is None:
            continue
        cells = [f"{s[k]:.2f}" if isinstance(s.get(k), (int, float)) else "–" for k, _ in METRICS]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _config(run: Path, stage_dir: str) -> dict:
    return json.loads((run / stage_dir / "train_config.json").read_text())


def tie_text(c: dict) -> str:
    """How the DCD teacher broke near-ties, per language (ratio and rule, from the stage's train_config.json)."""
    ratios = {**{lang: c.get("trajectory_tie_ratio", 0) for lang, _ in LANGUAGES},
              **c.get("trajectory_tie_ratio_by_language", {})}
    breaks = {**{lang: c.get("trajectory_tie_break", DEFAULT_TIE_BREAK) for lang, _ in LANGUAGES},
              **c.get("trajectory_tie_break_by_language", {})}
    margin = c.get("trajectory_tie_margin", DEFAULT_TIE_MARGIN)

    def rule(lang: str) -> str:
        return ("lowest token id" if breaks[lang] == "lowest_id"
                else f"lowest token id among those the image supports within {margin:g} nats")
    if not any(ratios.values()):
        return ""
    if len(set(ratios.values())) == 1 and len(set(breaks.values())) == 1:
        lang = LANGUAGES[0][0]
        return f", near-ties within ratio {ratios[lang]:g} broken by {rule(lang)}"
    return ", near-ties broken per language: " + ", ".join(
        f"{name} ratio {ratios[lang]:g} by {rule(lang)}" if ratios[lang] else f"{name} none"
        for lang, name in LANGUAGES)


def recipe_text(run: Path, stage_dirs: list[str]) -> str:
    """The recipe as the run's own train_config.json files record it (never a hand-written step count)."""
    vision = json.loads((run / "vision" / "summary.json").read_text()).get("val_labels", {})
    parts = []
    for d in stage_dirs:
        c = _config(run, d)
        steps = f"{c['max_steps']:,} steps"
        if c["stage"] == "vision":
            parts.append(f"vision pretraining {steps} (multi-label BCE through a linear read-out of the flattened "
                         f"tokens; validation label AUROC {vision.get('label_auroc_macro', '–')}, F1 micro "
                         f"{vision.get('label_f1_micro', '–')})")
        elif c["stage"] == "ar":
            parts.append(f"AR {steps} (tower {'frozen' if c['freeze_vision'] else 'trained'}, label term weight "
                         f"{c['label_weight']:g})")
        elif c["stage"] == "rad":
            parts.append(f"RAD {steps} at lr {c['lr']:g} (block length {c['block_length']})")
        else:
            order = c.get("trajectory_remasking", "low_confidence_dynamic")
            order = ("decoded left to right" if order == "sequential"
                     else f"decoded most confident first, tau {c['tau']:g}")
            order += tie_text(c)
            target = ("hard targets: cross-entropy on the tokens the teacher committed"
                      if c.get("dcd_target", "soft") == "hard" else "soft targets: KL to the teacher's distribution")
            studies = f"{c['max_examples']:,} studies per language" if c["max_examples"] else "every training study"
            parts.append(f"{c['stage'].upper()} {steps} on the teacher's trajectories of {studies} ({order}; "
                         f"{target}; step-wise weights {'on' if c['sw'] else 'off'}, <eos> CE weight {c['eos_ce']:g})")
    return "; ".join(parts) + "."


def validity_limit(run: Path, block: int) -> str:
    """How often this model's one-step reports are valid, per language, next to AR's (from the summaries)."""
    def valid(row: str, lang: str) -> str:
        s = _summary(run, row, lang)
        return f"{s['report_validity']:.1f}%" if s is not None else "not measured"
    parts = [f"{name} {valid(f'dcd-onestep-b{block}', lang)} (AR {valid('ar', lang)})" for lang, name in LANGUAGES]
    return ("Valid one-step reports on the test split: " + ", ".join(parts)
            + "; invalid ones mix the phrasings of a statement, or the words of a finding's side and zone.")


def main(run: Path, model_dir: Path, stage_dirs: list[str]) -> None:
    block = _config(run, stage_dirs[-1])["block_length"]
    metrics = "\n\n".join(f"Phantom test split, {name} (240 studies; benchmarks/results/builtin_model; -bL: block length L, this model is -b{block}):\n\n{table(run, lang)}"
                          for lang, name in LANGUAGES)
    write_model_card(
        model_dir,
        title=f"echocxr built-in model (CXR-Phantom, bilingual, DCD one-step, block length {block})",
        summary=("A small Qwen2.5-VL (4-layer 128-wide language model, 2-layer 96-wide vision tower, 16 vision "
                 "tokens per 112 px image, 1.5k-token vocabulary) trained by echocxr on CXR-Phantom: vision "
                 "pretraining on the finding labels -> AR SFT -> RAD -> DCD; it decodes each block of "
                 f"{block} tokens in one forward pass."),
        data=("CXR-Phantom seed 0: 9,600 studies (9,120 train / 240 val / 240 test), frontal views rendered at "
              "224 px and fed at 112 px, normalised reports in English and Chinese (one model for both)."),
        recipe="Recipe `phantom-builtin` on 2 CPU cores (`bash scripts/train_builtin_model.sh`): "
               + recipe_text(run, stage_dirs),
        metrics=metrics,
        limits=("English and Chinese CXR-Phantom reports only; other images get an out-of-domain notice.",
                validity_limit(run, block)),
        sections={"Command": "INSTALL=1 bash scripts/train_builtin_model.sh"},
    )


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit("usage: python scripts/write_builtin_card.py RUN_DIR MODEL_DIR STAGE_DIR... (in training order)")
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
