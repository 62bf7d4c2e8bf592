"""ReXGradient-160K (Rajpurkar lab / Gradient Health).

ASSUMED layout. The public description (dataset card on Hugging Face, arXiv 2505.00228) says: PNGs
ship as ``deid_png.part*`` (``cat deid_png.part* > deid_png.tar && tar -xf deid_png.tar``), metadata
sits in ``metadata/``, reports are segmented into Indication / Comparison / Findings / Impression, and
splits are train / valid / test. The exact metadata file names and keys could not be checked offline,
so this loader reads what the released metadata is reported to contain and accepts close variants::

    metadata/train_metadata.json | valid_metadata.json | test_metadata.json     (or .csv)
        JSON: {study_id: {...}} or [{...}, ...]; CSV: one row per study or per image
        keys (any case): ImagePath (list or one path), Findings, Impression,
                         optional id / StudyInstanceUid / AccessionNumber, ImageViewPosition
    deid_png/<PatientID>/<AccessionNumber>/studies/<StudyUID>/series/<SeriesUID>/instances/<SOPUID>.png

Image paths are tried relative to the root, to the metadata folder (they may start with
``../deid_png``) and under ``deid_png/``. Pass ``metadata=<file or folder>`` for other names.
"""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from echocxr.data.loaders.base import DatasetLoader, read_csv_rows, register_loader
from echocxr.data.manifest import Sample
from echocxr.data.sections import clean_text
from echocxr.errors import UserError

_ID_KEYS = ("id", "study_id", "studyid", "studyinstanceuid", "accessionnumber")
_SPLIT_FILES = ("train", "valid", "test")


@register_loader
class ReXGradientLoader(DatasetLoader):
    name = "rexgradient"
    aliases = ("rexgradient-160k", "rex-gradient")
    splits = {"train": "train", "val": "valid", "test": "test"}

    def __init__(self, metadata: str | os.PathLike | None = None):
        super().__init__()
        self.metadata = Path(metadata).expanduser() if metadata else None

    def iter_samples(self, root: Path, split: str | None) -> Iterator[Sample]:
        for path in self._metadata_files(root, split):
            for study_id, rec in _read_records(path):
                images = [str(self._resolve(root, path.parent, p)) for p in _as_list(_get(rec, "imagepath"))]
                yield Sample(
                    sample_id=f"rexgradient_{study_id}",
                    images=images,
                    findings=clean_text(_get(rec, "findings")),
                    impression=clean_text(_get(rec, "impression")),
                    language="en",
                )

    def _metadata_files(self, root: Path, split: str | None) -> list[Path]:
        if self.metadata is not None and self.metadata.is_file():
            return [self.metadata]
        folder = self.metadata or (root / "metadata" if (root / "metadata").is_dir() else root)
        names = [split] if split else list(_SPLIT_FILES)
        files = []
        for name in names:
            for suffix in ("_metadata.json", "_metadata.csv", ".json", ".csv"):
                p = folder / f"{name}{suffix}"
                if p.is_file():
                    files.append(p)
                    break
        if not files:
            raise UserError(
                f"ReXGradient metadata not found in {folder} (looked for "
                + ", ".join(f"{n}_metadata.json|csv" for n in names)
                + "); pass metadata=<file>"
            )
        return files

    @staticmethod
    def _resolve(root: Path, meta_dir: Path, rel: str) -> Path:
        p = Path(rel)
        if p.is_absolute():
            return p
        tail = PurePosixPath(rel.replace("\\", "/"))
        stripped = PurePosixPath(*[x for x in tail.parts if x not in (".", "..")])
        candidates = [root / tail, meta_dir / tail, root / stripped, root / "deid_png" / stripped]
        for c in candidates:
            if c.is_file():
                return c.resolve()
        return root / stripped


def _read_records(path: Path) -> Iterator[tuple[str, dict]]:
    """(study id, record) pairs from a JSON dict/list or a CSV (rows of one study merged)."""
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read ReXGradient metadata {path}: {exc}") from None
        if isinstance(data, dict):
            items = [(str(k), v) for k, v in data.items() if isinstance(v, dict)]
        elif isinstance(data, list):
            items = [(_study_id(r, i), r) for i, r in enumerate(data) if isinstance(r, dict)]
        else:
            raise UserError(f"ReXGradient metadata {path} must be a JSON object or list")
        yield from items
        return
    merged: dict[str, dict] = {}
    for i, row in enumerate(read_csv_rows(path)):
        sid = _study_id(row, i)
        rec = merged.get(sid)
        if rec is None:
            merged[sid] = dict(row)
            merged[sid]["ImagePath"] = _as_list(_get(row, "imagepath"))
        else:
            rec["ImagePath"] = rec["ImagePath"] + _as_list(_get(row, "imagepath"))
    yield from merged.items()


def _get(rec: dict, key: str):
    for k, v in rec.items():
        if k.lower().replace(" ", "").replace("_", "") == key:
            return v
    return None


def _study_id(rec: dict, index: int) -> str:
    for key in _ID_KEYS:
        v = _get(rec, key.replace("_", ""))
        if v not in (None, ""):
            return str(v)
    return f"row{index}"


def _as_list(value) -> list[str]:
    """ImagePath may be a list, a JSON / Python list literal in a CSV cell, or a single path."""
    if value is None:
        return []
    if isinstance(value, list):
        return [str(v) for v in value if v]
    text = str(value).strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            try:
                parsed = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                parsed = None
        if isinstance(parsed, list):
            return [str(v) for v in parsed if v]
    return [text] if text else []
