"""The common manifest: the official ECHO eval json shape plus `labels` and `language`.

A manifest file is a JSON list of records:
    {"sample_id": str, "images": [path, ...], "ground_truth": {"findings": str, "impression": str},
     "labels": [str, ...], "language": "en" | "zh"}
Image paths are relative to the manifest file's directory (absolute paths are kept as they are).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from echocxr.errors import UserError

LANGUAGES = ("en", "zh")


@dataclass
class Sample:
    sample_id: str
    images: list[str]
    findings: str
    impression: str
    labels: list[str] = field(default_factory=list)
    language: str = "en"

    def reference(self) -> str:
        """The reference string the official evaluation scores against (ECHO-SPEC §7)."""
        return reference_text(self.findings, self.impression, self.language)

    def to_record(self) -> dict:
        return {
            "sample_id": self.sample_id,
            "images": list(self.images),
            "ground_truth": {"findings": self.findings, "impression": self.impression},
            "labels": list(self.labels),
            "language": self.language,
        }

    @classmethod
    def from_record(cls, rec: dict, base_dir: Path | None = None) -> Sample:
        try:
            gt = rec.get("ground_truth") or {}
            images = rec.get("images") or []
            if isinstance(images, str):
                images = [images]
            if base_dir is not None:
                images = [str(p) if os.path.isabs(p) else str(base_dir / p) for p in images]
            return cls(
                sample_id=str(rec["sample_id"]),
                images=list(images),
                findings=str(gt.get("findings", "") or ""),
                impression=str(gt.get("impression", "") or ""),
                labels=list(rec.get("labels") or []),
                language=record_language(rec, gt),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"malformed manifest record ({exc!r}): {str(rec)[:120]}") from None


def record_language(rec: dict, ground_truth: dict) -> str:
    """A record's `language`, else the official rule on its reference text (over 10% CJK = Chinese).

    Never a silent default: an official ECHO json has no `language` field, and its Chinese files
    must not be scored as English.
    """
    from echocxr.data.sections import detect_language

    language = rec.get("language")
    if language in (None, ""):
        text = str(ground_truth.get("findings", "") or "") + str(ground_truth.get("impression", "") or "")
        return detect_language(text)
    if language not in LANGUAGES:
        raise UserError(f"record {rec.get('sample_id')!r}: language {language!r} is not one of {', '.join(LANGUAGES)}")
    return str(language)


def reference_text(findings: str, impression: str, language: str = "en") -> str:
    if language == "zh":
        return f"所见：{findings} 结论：{impression}"
    return f"Findings: {findings} Impression: {impression}."


def load_manifest(path: str | os.PathLike) -> list[Sample]:
    """Read a manifest; image paths come back resolved against the manifest's directory."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"manifest not found: {path}")
    return [Sample.from_record(rec, base_dir=path.parent) for rec in read_json_list(path, "manifest", "records")]


def read_json_list(path: Path, what: str, items: str) -> list:
    """A JSON file holding a list (manifests, official ECHO eval json); one-line errors name `what` it is."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {what} {path}: {exc}") from None
    if not isinstance(data, list):
        raise UserError(f"{what} {path} must be a JSON list of {items}")
    return data


def save_manifest(samples: list[Sample], path: str | os.PathLike, relative_to_manifest: bool = True) -> None:
    """Write atomically; image paths are stored relative to the manifest directory when possible."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    records = []
    for s in samples:
        rec = s.to_record()
        if relative_to_manifest:
            rec["images"] = [_relative(p, path.parent) for p in s.images]
        records.append(rec)
    atomic_write_text(path, json.dumps(records, ensure_ascii=False, indent=1))


def _relative(p: str, base: Path) -> str:
    try:
        return os.path.relpath(os.path.abspath(p), os.path.abspath(base))
    except ValueError:
        return p


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write via a temp file + rename so a crash never leaves a half-written file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
