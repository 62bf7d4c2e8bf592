"""One small base class for dataset loaders, and the registry that finds them by name.

A loader only knows its dataset's published layout: it yields `Sample`s with candidate image paths.
The base class does the rest uniformly: split / language checks, image checks, skipping (never
crashing on) missing or corrupt images, and ONE warning that summarises what was skipped.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import sys
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from echocxr.data.images import IMAGE_CHECKS, check_image
from echocxr.data.manifest import LANGUAGES, Sample
from echocxr.errors import UserError

# User-facing split names -> the spellings datasets use.
SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validate": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test",
}


class SkippedImagesWarning(UserWarning):
    """Emitted once per `load` when images or studies were skipped."""


@dataclass
class LoadStats:
    """What a `load` kept and skipped; `summary()` is the text of the single warning."""

    studies_seen: int = 0
    samples_kept: int = 0
    images_skipped: int = 0
    samples_without_images: int = 0
    samples_without_text: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def anything_skipped(self) -> bool:
        return bool(self.images_skipped or self.samples_without_images or self.samples_without_text)

    def note(self, path: str, reason: str) -> None:
        self.images_skipped += 1
        if len(self.examples) < 3:
            self.examples.append(f"{path} ({reason})")

    def summary(self, name: str) -> str:
        parts = [f"{name}: kept {self.samples_kept} of {self.studies_seen} studies"]
        if self.images_skipped:
            parts.append(f"skipped {self.images_skipped} missing/unreadable image(s)")
        if self.samples_without_images:
            parts.append(f"dropped {self.samples_without_images} study(ies) left with no usable image")
        if self.samples_without_text:
            parts.append(f"dropped {self.samples_without_text} study(ies) with no Findings/Impression text")
        msg = "; ".join(parts)
        if self.examples:
            msg += "; e.g. " + ", ".join(self.examples)
        return msg


class DatasetLoader(ABC):
    """Reads one dataset's published layout into manifest `Sample`s.

    Subclasses set `name` (registry key), `splits` (our split name -> the dataset's own) and
    `languages`, and implement `iter_samples`. Loader-specific options go to `__init__`.
    """

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    splits: ClassVar[dict[str, str]] = {"train": "train", "val": "val", "test": "test"}
    languages: ClassVar[tuple[str, ...]] = ("en",)

    def __init__(self) -> None:
        self.stats = LoadStats()

    @abstractmethod
    def iter_samples(self, root: Path, split: str | None) -> Iterator[Sample]:
        """Yield samples for `split` (the dataset's own spelling, None = all) with unchecked images."""

    def load(
        self,
        root: str | os.PathLike,
        split: str | None = None,
        language: str | None = None,
        *,
        image_check: str = "open",
        limit: int | None = None,
    ) -> list[Sample]:
        """Samples of `split` (None = every split) with only usable images.

        `language` labels the samples; None keeps the dataset's own. `image_check` is one of
        "none" | "exists" | "open" | "decode" (see `echocxr.data.images.check_image`).
        `limit` stops after that many kept samples (quick looks at huge datasets).
        """
        root = Path(root).expanduser()
        if not root.exists():
            raise UserError(f"{self.name}: dataset root not found: {root}")
        if image_check not in IMAGE_CHECKS:
            raise UserError(f"unknown image check {image_check!r}; choose one of {', '.join(IMAGE_CHECKS)}")
        if limit is not None and limit <= 0:
            raise UserError(f"limit must be positive, got {limit}")
        own_split = self.resolve_split(split)
        lang = self.resolve_language(language)

        self.stats = stats = LoadStats()
        out: list[Sample] = []
        for sample in _progress(self.iter_samples(root, own_split), f"loading {self.name}"):
            stats.studies_seen += 1
            if not (sample.findings.strip() or sample.impression.strip()):
                stats.samples_without_text += 1
                continue
            good = []
            for img in sample.images:
                reason = check_image(img, image_check)
                if reason is None:
                    good.append(str(img))
                else:
                    stats.note(str(img), reason)
            if not good:
                stats.samples_without_images += 1
                continue
            sample.images = good
            if lang is not None:
                sample.language = lang
            out.append(sample)
            if limit is not None and len(out) >= limit:
                break
        stats.samples_kept = len(out)
        if stats.anything_skipped:
            warnings.warn(stats.summary(self.name), SkippedImagesWarning, stacklevel=2)
        if not out:
            raise UserError(
                f"{self.name}: no usable samples under {root}"
                + (f" for split {split!r}" if split else "")
                + f" ({stats.summary(self.name)})"
            )
        return out

    def resolve_split(self, split: str | None) -> str | None:
        """Our split name ("train" / "val" / "test", with aliases) -> the dataset's spelling."""
        if split is None:
            return None
        key = SPLIT_ALIASES.get(split.strip().lower())
        if key is None or key not in self.splits:
            raise UserError(
                f"{self.name}: unknown split {split!r}; available: {', '.join(self.splits) or 'none'}"
            )
        return self.splits[key]

    def resolve_language(self, language: str | None) -> str | None:
        if language is None:
            return None
        if language not in LANGUAGES:
            raise UserError(f"unknown language {language!r}; choose one of {', '.join(LANGUAGES)}")
        if language not in self.languages:
            raise UserError(
                f"{self.name} reports are {'/'.join(self.languages)} only; load them as "
                f"{self.languages[0]!r} and translate with the LLM rewriter (echocxr.data.rewriter)"
            )
        return language


# ----------------------------------------------------------------------------- registry

_REGISTRY: dict[str, type[DatasetLoader]] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(" ", "-")


def register_loader(cls: type[DatasetLoader]) -> type[DatasetLoader]:
    """Class decorator: make a loader available to `get_loader` under its name and aliases."""
    _REGISTRY[cls.name] = cls
    for alias in (cls.name, *cls.aliases):
        _ALIASES[_key(alias)] = cls.name
    return cls


def loader_names() -> list[str]:
    return sorted(_REGISTRY)


def get_loader(name: str, **options) -> DatasetLoader:
    """Instantiate the loader registered as `name` (or an alias) with its loader-specific options."""
    canon = _ALIASES.get(_key(name))
    if canon is None:
        raise UserError(f"unknown dataset {name!r}; available: {', '.join(loader_names())}")
    try:
        return _REGISTRY[canon](**options)
    except TypeError as exc:
        raise UserError(f"{canon}: bad option(s) {sorted(options)}: {exc}") from None


# ----------------------------------------------------------------------------- helpers for loaders


def read_csv_rows(path: Path) -> Iterator[dict[str, str]]:
    """Rows of a .csv or .csv.gz as dicts (report CSVs have huge text fields, so lift the limit)."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
            yield from csv.DictReader(text)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None


def find_file(root: Path, names: Iterable[str], what: str) -> Path:
    """First of `names` (relative to root) that exists; a one-line error naming them all otherwise."""
    names = list(names)
    for name in names:
        if (root / name).is_file():
            return root / name
    raise UserError(f"{what} not found under {root} (looked for {', '.join(names)})")


def stable_split(key: str, fractions: tuple[float, float] = (0.7, 0.1)) -> str:
    """Deterministic train/val/test assignment from a hash, for datasets without an official split."""
    bucket = int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) / 16**8
    if bucket < fractions[0]:
        return "train"
    if bucket < fractions[0] + fractions[1]:
        return "val"
    return "test"


def _progress(it: Iterable, desc: str) -> Iterable:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return it
    return tqdm(it, desc=desc, unit=" studies", disable=None, leave=False)
