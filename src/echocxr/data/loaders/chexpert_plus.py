"""CheXpert Plus (Stanford AIMI).

Published layout (root = the download directory)::

    df_chexpert_plus_240401.csv     path_to_image, frontal_lateral, ap_pa, report,
                                    section_findings, section_impression, ..., split (train/valid)
    PNG/train/patient00001/study1/view1_frontal.png     (the PNG release; some mirrors nest PNG/PNG/)

``path_to_image`` is written with a .jpg suffix (``train/patient00001/study1/view1_frontal.jpg``);
the image is looked up as given, then as .png under ``PNG/`` and ``PNG/PNG/``. One sample per study.
When both section columns are empty the full ``report`` is split with the section parser.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath

from echocxr.data.loaders.base import DatasetLoader, read_csv_rows, register_loader
from echocxr.data.manifest import Sample
from echocxr.data.sections import clean_text, split_report
from echocxr.errors import UserError

_IMAGE_BASES = ("", "PNG", "PNG/PNG", "images")


@register_loader
class ChexpertPlusLoader(DatasetLoader):
    name = "chexpert-plus"
    aliases = ("chexpertplus", "chexpert")
    splits = {"train": "train", "val": "valid"}

    def __init__(self, csv_path: str | os.PathLike | None = None, views: Sequence[str] | None = None):
        """`csv_path`: the report CSV if not ``<root>/df_chexpert_plus_*.csv``; `views`: keep images whose
        ``frontal_lateral`` or ``ap_pa`` value is listed (e.g. ``("Frontal",)``), None keeps all."""
        super().__init__()
        self.csv_path = Path(csv_path).expanduser() if csv_path else None
        self.views = {v.strip().lower() for v in views} if views else None
        self._base: tuple[Path, str] | None = None

    def iter_samples(self, root: Path, split: str | None) -> Iterator[Sample]:
        csv_path = self.csv_path or self._find_csv(root)
        studies: dict[str, dict] = {}
        for row in read_csv_rows(csv_path):
            rel = (row.get("path_to_image") or "").strip()
            if not rel:
                continue
            if split is not None and (row.get("split") or "").strip().lower() != split:
                continue
            if self.views is not None:
                tags = {(row.get("frontal_lateral") or "").strip().lower(), (row.get("ap_pa") or "").strip().lower()}
                if not tags & self.views:
                    continue
            parts = PurePosixPath(rel).parts
            key = "_".join(parts[:-1]) if len(parts) > 1 else PurePosixPath(rel).stem
            st = studies.get(key)
            if st is None:
                st = studies[key] = {"images": [], "row": row}
            st["images"].append(rel)
        self._base = None
        for key, st in studies.items():
            row = st["row"]
            findings = clean_text(row.get("section_findings"))
            impression = clean_text(row.get("section_impression"))
            if not (findings or impression) and row.get("report"):
                sec = split_report(row["report"])
                findings, impression = sec.findings, sec.impression
            yield Sample(
                sample_id=f"chexpertplus_{key}",
                images=[str(self._resolve(root, rel)) for rel in st["images"]],
                findings=findings,
                impression=impression,
                language="en",
            )

    @staticmethod
    def _find_csv(root: Path) -> Path:
        if root.is_file() and root.suffix in (".csv", ".gz"):
            return root
        found = sorted(root.glob("df_chexpert_plus*.csv")) + sorted(root.glob("df_chexpert_plus*.csv.gz"))
        if not found:
            raise UserError(f"CheXpert Plus report CSV (df_chexpert_plus_240401.csv) not found under {root}")
        return found[-1]

    def _resolve(self, root: Path, rel: str) -> Path:
        """Find the image; remember the (folder, suffix) that worked so later rows cost one stat."""
        root = root.parent if root.is_file() else root
        rel_path = PurePosixPath(rel)
        if self._base is not None:
            base, suffix = self._base
            p = base / (rel_path.with_suffix(suffix) if suffix else rel_path)
            if p.is_file():
                return p
        for sub in _IMAGE_BASES:
            base = root / sub if sub else root
            for suffix in ("", ".png", ".jpg"):
                p = base / (rel_path.with_suffix(suffix) if suffix else rel_path)
                if p.is_file():
                    self._base = (base, suffix)
                    return p
        return root / "PNG" / rel_path.with_suffix(".png")  # reported as missing by the base class
