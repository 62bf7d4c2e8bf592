"""IU X-ray / Open-i (NLM Indiana University chest X-ray collection).

Published layout (root = where the two NLM archives were extracted)::

    ecgen-radiology/1.xml ... 3999.xml      from NLMCXR_reports.tgz (the .tgz itself also works)
    NLMCXR_png/CXR1_1_IM-0001-3001.png      from NLMCXR_png.tgz

Each XML report lists its images as ``<parentImage id="CXR1_1_IM-0001-3001">``; the image file is
``<id>.png``. The collection has no official split, so "train"/"val"/"test" is a deterministic
70/10/20 hash split on the report id (stable across machines and runs).
"""

from __future__ import annotations

import os
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from echocxr.data.loaders.base import DatasetLoader, register_loader, stable_split
from echocxr.data.manifest import Sample
from echocxr.data.sections import ReportSections, sections_from_labelled
from echocxr.errors import UserError

_REPORT_DIRS = ("ecgen-radiology", "NLMCXR_reports/ecgen-radiology", "reports/ecgen-radiology", "reports")
_REPORT_ARCHIVES = ("NLMCXR_reports.tgz", "NLMCXR_reports.tar.gz")
_IMAGE_DIRS = ("NLMCXR_png", "images", "png", "")


@dataclass
class IUReport:
    """One parsed IU X-ray XML report."""

    uid: str
    sections: ReportSections
    image_ids: list[str] = field(default_factory=list)


def parse_iu_xml(xml: str | bytes, fallback_uid: str = "") -> IUReport:
    """Report id ("CXR1"), Findings/Impression (+ dropped sections) and image ids of one XML report."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise UserError(f"malformed IU X-ray report XML {fallback_uid}: {exc}") from None
    uid_el = root.find("uId")
    uid = (uid_el.get("id") if uid_el is not None else None) or fallback_uid
    sections = sections_from_labelled((el.get("Label"), "".join(el.itertext())) for el in root.iter("AbstractText"))
    image_ids = [el.get("id") for el in root.iter("parentImage") if el.get("id")]
    return IUReport(uid=uid, sections=sections, image_ids=image_ids)


def iter_iu_archive(path: str | os.PathLike) -> Iterator[IUReport]:
    """Parse every ``*.xml`` report inside NLMCXR_reports.tgz without extracting it."""
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".xml"):
                    f = tar.extractfile(member)
                    if f is not None:
                        yield parse_iu_xml(f.read(), fallback_uid=Path(member.name).stem)
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise UserError(f"cannot read IU X-ray report archive {path}: {exc}") from None


def iter_iu_dir(folder: str | os.PathLike) -> Iterator[IUReport]:
    """Parse every ``*.xml`` report in an extracted ecgen-radiology folder (numeric order)."""
    files = sorted(Path(folder).glob("*.xml"), key=lambda p: (len(p.stem), p.stem))
    for p in files:
        yield parse_iu_xml(p.read_bytes(), fallback_uid=p.stem)


@register_loader
class IUXrayLoader(DatasetLoader):
    name = "iu-xray"
    aliases = ("iu", "openi", "open-i", "nlmcxr", "iuxray")

    def __init__(self, reports: str | os.PathLike | None = None, images: str | os.PathLike | None = None):
        """`reports`: ecgen-radiology folder or NLMCXR_reports.tgz; `images`: folder of CXR*.png."""
        super().__init__()
        self.reports = Path(reports).expanduser() if reports else None
        self.images = Path(images).expanduser() if images else None

    def iter_samples(self, root: Path, split: str | None) -> Iterator[Sample]:
        source = self._reports_source(root)
        reports = iter_iu_archive(source) if source.is_file() else iter_iu_dir(source)
        image_dir = self._image_dir(root)
        for rep in reports:
            if split is not None and stable_split(rep.uid) != split:
                continue
            yield Sample(
                sample_id=f"iu_{rep.uid}",
                images=[str(image_dir / f"{iid}.png") for iid in rep.image_ids],
                findings=rep.sections.findings,
                impression=rep.sections.impression,
                language="en",
            )

    def _reports_source(self, root: Path) -> Path:
        if self.reports is not None:
            if not self.reports.exists():
                raise UserError(f"IU X-ray reports not found: {self.reports}")
            return self.reports
        for d in _REPORT_DIRS:
            if (root / d).is_dir() and any((root / d).glob("*.xml")):
                return root / d
        for a in _REPORT_ARCHIVES:
            if (root / a).is_file():
                return root / a
        raise UserError(
            f"IU X-ray reports not found under {root}: expected ecgen-radiology/*.xml or NLMCXR_reports.tgz"
        )

    def _image_dir(self, root: Path) -> Path:
        if self.images is not None:
            return self.images
        for d in _IMAGE_DIRS:
            cand = root / d if d else root
            if cand.is_dir() and next(cand.glob("CXR*.png"), None) is not None:
                return cand
        return root / "NLMCXR_png"  # every image then counts as missing, with one summary warning
