"""Real chest X-ray report texts, offline: the IU X-ray (OpenI) reports shipped inside `torchxrayvision`.

`torchxrayvision` carries `data/NLMCXR_reports.tgz` (~3.9k de-identified reports, no images). It cannot
be imported here (it needs torchvision, which has no build beside CPU torch 2.13), so the file is
located through the installed distribution's metadata instead. Install it with
`pip install --no-deps torchxrayvision`. The texts are read at run time and never copied.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import tarfile
import xml.etree.ElementTree as ET
from functools import lru_cache
from pathlib import Path

REPORTS_FILE = "NLMCXR_reports.tgz"
_SECTIONS = {"FINDINGS": "findings", "IMPRESSION": "impression", "INDICATION": "indication",
             "COMPARISON": "comparison"}


def iu_reports_path() -> Path | None:
    """Path of torchxrayvision's NLMCXR_reports.tgz, or None when the package (or file) is absent."""
    try:
        spec = importlib.util.find_spec("torchxrayvision")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            p = Path(folder) / "data" / REPORTS_FILE
            if p.is_file():
                return p
    try:
        dist = importlib.metadata.distribution("torchxrayvision")
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or []:
        if f.name == REPORTS_FILE:
            p = Path(str(dist.locate_file(f)))
            if p.is_file():
                return p
    return None


def _clean(text: str | None) -> str:
    return re.sub(r"\s+", " ", text or "").strip()


@lru_cache(maxsize=2)
def _read(path: str) -> tuple[dict, ...]:
    out = []
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(".xml"):
                continue
            fh = tar.extractfile(member)
            if fh is None:
                continue
            root = ET.fromstring(fh.read())
            uid = root.find("uId")
            rec = {"uid": uid.get("id", "") if uid is not None else Path(member.name).stem,
                   "findings": "", "impression": "", "indication": "", "comparison": ""}
            for node in root.iter("AbstractText"):
                key = _SECTIONS.get((node.get("Label") or "").upper())
                if key:
                    rec[key] = _clean(node.text)
            out.append(rec)
    out.sort(key=lambda r: (len(r["uid"]), r["uid"]))
    return tuple(out)


def read_iu_reports(path: str | Path | None = None) -> list[dict]:
    """All IU reports as dicts with `uid`, `findings`, `impression`, `indication`, `comparison` (may be "").

    Raises FileNotFoundError when torchxrayvision (or its report archive) is not installed.
    """
    path = Path(path) if path is not None else iu_reports_path()
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"IU X-ray reports not found: install them with `pip install --no-deps torchxrayvision` ({REPORTS_FILE})")
    return [dict(r) for r in _read(str(path))]
