"""The official ECHO evaluation json (midea-ai/ECHO, ``eval/CXRTest_demo/jsons/*.json``).

Shape: a JSON list of ``{"sample_id", "images": [path, ...], "ground_truth": {"findings", "impression"}}``
(our manifest adds ``labels`` and ``language``, which are read when present). The official files use
image paths relative to different places (``../CXRTest/...`` beside the json, ``CXRTest/...`` from the
eval folder), so each path is tried against the json's folder, ``image_root`` and the working
directory. Language comes from the record, else from the text (official rule: >10% CJK = Chinese).
A json file is one split already, so `split` is not accepted.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from echocxr.data.loaders.base import DatasetLoader, register_loader
from echocxr.data.manifest import LANGUAGES, Sample, read_json_list
from echocxr.data.sections import clean_text, detect_language, split_report
from echocxr.errors import UserError


@register_loader
class EchoJsonLoader(DatasetLoader):
    name = "echo-json"
    aliases = ("echo", "echo-eval", "manifest")
    splits: dict[str, str] = {}
    languages = LANGUAGES

    def __init__(self, image_root: str | os.PathLike | None = None):
        super().__init__()
        self.image_root = Path(image_root).expanduser() if image_root else None

    def resolve_split(self, split: str | None) -> str | None:
        if split is not None:
            raise UserError("an ECHO json file is already one split: pass the file of the split you want")
        return None

    def iter_samples(self, root: Path, split: str | None) -> Iterator[Sample]:
        path = self._json_path(root)
        data = read_json_list(path, "ECHO json", "samples")
        bases = [path.parent] + ([self.image_root] if self.image_root else []) + [Path.cwd()]
        for i, rec in enumerate(data):
            yield self._sample(rec, i, path, bases)

    @staticmethod
    def _json_path(root: Path) -> Path:
        if root.is_file():
            return root
        found = sorted(root.glob("*.json"))
        if len(found) == 1:
            return found[0]
        raise UserError(
            f"pass the ECHO json file itself, not the folder {root} "
            + (f"({len(found)} json files there)" if found else "(no json files there)")
        )

    @staticmethod
    def _sample(rec, i: int, path: Path, bases: list[Path]) -> Sample:
        if not isinstance(rec, dict) or "images" not in rec or "ground_truth" not in rec:
            raise UserError(f"{path}: record {i} needs 'images' and 'ground_truth': {str(rec)[:100]}")
        images = rec["images"]
        if isinstance(images, str):
            images = [images]
        if not isinstance(images, list):
            raise UserError(f"{path}: record {i} 'images' must be a list of paths")
        gt = rec["ground_truth"]
        if isinstance(gt, dict):
            findings, impression = clean_text(gt.get("findings")), clean_text(gt.get("impression"))
        else:  # the official reader also accepts a plain reference string
            sec = split_report(str(gt or ""))
            findings, impression = sec.findings, sec.impression
        language = rec.get("language")
        if language not in LANGUAGES:
            language = detect_language(findings + impression)
        return Sample(
            sample_id=str(rec.get("sample_id") or f"{path.stem}_{i}"),
            images=[str(_resolve(str(p), bases)) for p in images],
            findings=findings,
            impression=impression,
            labels=[str(x) for x in rec.get("labels") or []],
            language=language,
        )


def _resolve(rel: str, bases: list[Path]) -> Path:
    p = Path(rel).expanduser()
    if p.is_absolute():
        return p
    for base in bases:
        if (base / p).exists():
            return (base / p).resolve()
    return bases[0] / p
