"""Document-frequency tables for CIDEr (`--cider-df`): the COCO-style table `cidereval` ships, read safely.

Why: the official ECHO run takes CIDEr's document frequencies from cidereval's MS-COCO validation
table instead of the evaluated references. That table is a pickle; unpickling runs code, so this
reader allows only the few plain types such a table is made of (a dict or defaultdict of n-gram tuples
to counts, and the log of the reference count) and refuses anything else with a one-line error.
"""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import dataclass
from pathlib import Path

from echocxr.errors import UserError

_ALLOWED = {("collections", "defaultdict"), ("builtins", "float"), ("builtins", "int"),
            ("__builtin__", "float"), ("__builtin__", "int")}


@dataclass(frozen=True)
class DfTable:
    df: dict[tuple[str, ...], float]
    log_n: float
    source: str


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D102 - pickle hook
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a document-frequency table")
        return super().find_class(module, name)


def _from_obj(obj: object, path: Path) -> DfTable:
    if not isinstance(obj, dict) or "df" not in obj or "ref_len" not in obj:
        raise UserError(f"{path}: a CIDEr document-frequency table needs \"df\" and \"ref_len\"")
    raw = obj["df"]
    items = raw.items() if isinstance(raw, dict) else raw
    df: dict[tuple[str, ...], float] = {}
    try:
        for gram, count in items:
            gram = tuple(gram.split()) if isinstance(gram, str) else tuple(str(w) for w in gram)
            df[gram] = float(count)
        log_n = float(obj["ref_len"])
    except (TypeError, ValueError):
        raise UserError(f"{path}: \"df\" must map n-grams to counts and \"ref_len\" be a number") from None
    if not df or not math.isfinite(log_n):
        raise UserError(f"{path}: empty document-frequency table or bad \"ref_len\"")
    return DfTable(df, log_n, str(path))


def load_df_table(path: str | Path) -> DfTable:
    """A COCO-style table: cidereval's pickle ({"ref_len", "df"}) or the same as JSON."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"CIDEr document-frequency table not found: {path}")
    data = path.read_bytes()
    if data[:1] in (b"{", b"["):
        try:
            return _from_obj(json.loads(data.decode("utf-8")), path)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{path}: not valid JSON ({exc})") from None
    try:
        import io

        obj = _PlainUnpickler(io.BytesIO(data), encoding="iso-8859-1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as exc:
        raise UserError(f"{path}: not a CIDEr document-frequency table ({exc})") from None
    return _from_obj(obj, path)
