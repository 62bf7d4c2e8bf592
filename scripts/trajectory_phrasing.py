"""How the DCD teacher phrased its trajectories: the targets a one-step student is trained on.

    python scripts/trajectory_phrasing.py TRAJECTORIES.pt MODEL_DIR DATA_DIR

TRAJECTORIES.pt is a cache written by `echocxr train dcd` (RUN/trajectories/trajectories-<key>.pt; the
stage's train_config.json names it), MODEL_DIR a model with the run's tokenizer, DATA_DIR the phantom set
(train_<lang>.json). Per language: the phrasing agreement of the trajectories (scripts/phrasing_consistency.py)
and the share of their sentences phrased as the study's reference is (a teacher that copied its training
references would score 100; the phantom's phrasings are drawn uniformly from three, so chance is about 33).
Prints one JSON object per language.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from phrasing_consistency import agreement

from echocxr.data.phantom.parse import read_report


def trajectory_texts(cache: Path, model_dir: Path) -> dict[str, str]:
    """sample key -> the report the teacher wrote (its committed tokens, decoded)."""
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    trajs = torch.load(cache, weights_only=False, mmap=True)["trajectories"]
    return {key: tok.decode(t.tokens, skip_special_tokens=True) for key, t in trajs.items()}


def as_reference_share(language: str, texts: dict[str, str], references: dict[str, str]) -> float | None:
    same = total = 0
    for sid, text in texts.items():
        ref = {s.statement: s.text for s in read_report(references[sid], language).sentences if s.statement}
        for s in read_report(text, language).sentences:
            if s.valid and s.statement in ref:
                total += 1
                same += ref[s.statement] == s.text
    return round(100 * same / total, 1) if total else None


def trajectory_phrasing(cache: Path, model_dir: Path, data_dir: Path) -> list[dict]:
    texts = trajectory_texts(cache, model_dir)
    out = []
    for lang in ("en", "zh"):
        path = data_dir / f"train_{lang}.json"
        if not path.is_file():
            continue
        refs = {r["sample_id"]: f"Findings: {r['ground_truth']['findings']} Impression: {r['ground_truth']['impression']}"
                if lang == "en" else f"所见：{r['ground_truth']['findings']} 结论：{r['ground_truth']['impression']}"
                for r in json.loads(path.read_text())}
        mine = {key.rsplit("#", 1)[0]: t for key, t in texts.items() if key.endswith(f"#{lang}")}
        mine = {sid: t for sid, t in mine.items() if sid in refs}
        out.append({"cache": str(cache), "studies": len(mine), **agreement(lang, mine.values()),
                    "phrased_as_reference": as_reference_share(lang, mine, refs)})
    return out


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python scripts/trajectory_phrasing.py TRAJECTORIES.pt MODEL_DIR DATA_DIR")
    for row in trajectory_phrasing(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])):
        print(json.dumps(row))
