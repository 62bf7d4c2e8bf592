"""echocxr's cache folder: $ECHOCXR_CACHE_DIR, else $XDG_CACHE_HOME/echocxr, else ~/.cache/echocxr.

Things made once and shared by runs live here (the WordNet folder METEOR reads, CXR-Phantom sets a training
recipe renders), never in the current directory or beside a run without being named.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    if os.environ.get("ECHOCXR_CACHE_DIR"):
        return Path(os.environ["ECHOCXR_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "echocxr"
