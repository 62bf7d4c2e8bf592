"""MIMIC-CXR-JPG (PhysioNet) with the free-text reports of MIMIC-CXR.

Published layout (root = the mimic-cxr-jpg/2.x.0 directory)::

    mimic-cxr-2.0.0-split.csv.gz       dicom_id, study_id, subject_id, split (train/validate/test)
    mimic-cxr-2.0.0-metadata.csv.gz    dicom_id, ..., ViewPosition (PA, AP, LATERAL, LL, ...)
    files/p10/p10000032/s50414267/<dicom_id>.jpg

Reports come from MIMIC-CXR's ``mimic-cxr-reports.zip`` (``files/p10/p10000032/s50414267.txt``):
either extracted under the root (or a ``mimic-cxr-reports/`` folder beside it), the zip itself, or a
directory/zip passed as ``reports``. One sample per study, frontal views first.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from echocxr.data.loaders.base import DatasetLoader, find_file, read_csv_rows, register_loader
from echocxr.data.manifest import Sample
from echocxr.data.sections import split_report
from echocxr.errors import UserError

_VIEW_ORDER = {"PA": 0, "AP": 1, "AP AXIAL": 2, "PA LLD": 3, "AP LLD": 3, "LATERAL": 4, "LL": 5}


@register_loader
class MimicCxrJpgLoader(DatasetLoader):
    name = "mimic-cxr-jpg"
    aliases = ("mimic-cxr", "mimic")
    splits = {"train": "train", "val": "validate", "test": "test"}

    def __init__(self, reports: str | os.PathLike | None = None, views: Sequence[str] | None = None):
        """`reports`: directory or zip holding ``files/pXX/pXXXXXXXX/sXXXXXXXX.txt``; `views`: keep only
        these ViewPosition values (e.g. ``("PA", "AP")``), None keeps every view."""
        super().__init__()
        self.reports = Path(reports).expanduser() if reports else None
        self.views = {v.strip().upper() for v in views} if views else None

    def iter_samples(self, root: Path, split: str | None) -> Iterator[Sample]:
        split_csv = find_file(
            root, ["mimic-cxr-2.0.0-split.csv.gz", "mimic-cxr-2.0.0-split.csv"], "MIMIC-CXR-JPG split file"
        )
        view_of: dict[str, str] = {}
        meta = [root / n for n in ("mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-metadata.csv")]
        meta_path = next((p for p in meta if p.is_file()), None)
        if meta_path is not None:
            view_of = {r["dicom_id"]: (r.get("ViewPosition") or "").strip().upper() for r in read_csv_rows(meta_path)}
        elif self.views:
            raise UserError(f"views filter needs mimic-cxr-2.0.0-metadata.csv(.gz) under {root}")

        studies: dict[tuple[str, str], list[str]] = {}
        for row in read_csv_rows(split_csv):
            try:
                dicom, study, subject, row_split = row["dicom_id"], row["study_id"], row["subject_id"], row["split"]
            except KeyError as exc:
                raise UserError(f"{split_csv}: missing column {exc}") from None
            if split is not None and row_split != split:
                continue
            if self.views is not None and view_of.get(dicom, "") not in self.views:
                continue
            studies.setdefault((subject, study), []).append(dicom)

        reports = _ReportStore(self._report_sources(root))
        try:
            probe = list(studies)[:20]
            if probe and all(reports.get(sub, st) is None for sub, st in probe):
                raise UserError(
                    f"no MIMIC-CXR report files found for the first {len(probe)} studies: extract "
                    f"mimic-cxr-reports.zip under {root} (files/pXX/pXXXXXXXX/sXXXXXXXX.txt) or pass reports=..."
                )
            for (subject, study), dicoms in studies.items():
                text = reports.get(subject, study)
                sec = split_report(text) if text else None
                folder = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
                dicoms = sorted(dicoms, key=lambda d: _VIEW_ORDER.get(view_of.get(d, ""), 9))
                yield Sample(
                    sample_id=f"mimic_s{study}",
                    images=[str(folder / f"{d}.jpg") for d in dicoms],
                    findings=sec.findings if sec else "",
                    impression=sec.impression if sec else "",
                    language="en",
                )
        finally:
            reports.close()

    def _report_sources(self, root: Path) -> list[Path]:
        if self.reports is not None:
            if not self.reports.exists():
                raise UserError(f"MIMIC-CXR reports not found: {self.reports}")
            return [self.reports]
        candidates = [
            root,
            root / "mimic-cxr-reports",
            root / "mimic-cxr-reports.zip",
            root.parent / "mimic-cxr-reports",
            root.parent / "mimic-cxr-reports.zip",
        ]
        found = [c for c in candidates if (c.is_file() and c.suffix == ".zip") or (c / "files").is_dir()]
        if not found:
            raise UserError(
                f"MIMIC-CXR reports not found: extract mimic-cxr-reports.zip under {root} "
                "(files/pXX/pXXXXXXXX/sXXXXXXXX.txt) or pass reports=<dir or zip>"
            )
        return found


class _ReportStore:
    """Looks a study's report up in extracted folders and/or the original zip."""

    def __init__(self, sources: list[Path]):
        self.dirs = [s for s in sources if s.is_dir()]
        self.zips: list[tuple[zipfile.ZipFile, dict[str, str]]] = []
        for s in sources:
            if s.is_file():
                try:
                    zf = zipfile.ZipFile(s)
                except (OSError, zipfile.BadZipFile) as exc:
                    raise UserError(f"cannot open reports zip {s}: {exc}") from None
                # Member names may or may not carry a top folder: index by the "files/..." tail.
                index = {}
                for n in zf.namelist():
                    i = n.find("files/")
                    if i >= 0 and n.endswith(".txt"):
                        index[n[i:]] = n
                self.zips.append((zf, index))

    def get(self, subject: str, study: str) -> str | None:
        rel = f"files/p{subject[:2]}/p{subject}/s{study}.txt"
        for d in self.dirs:
            p = d / rel
            if p.is_file():
                return p.read_text(encoding="utf-8", errors="replace")
        for zf, index in self.zips:
            member = index.get(rel)
            if member is not None:
                return zf.read(member).decode("utf-8", errors="replace")
        return None

    def close(self) -> None:
        for zf, _ in self.zips:
            zf.close()
