"""Dataset loaders: published layouts of real CXR datasets -> the common manifest.

    samples = load_dataset("mimic-cxr-jpg", "/data/mimic-cxr-jpg/2.1.0", split="test")
    convert_dataset("iu-xray", "/data/openi", "manifests/iu_test.json", split="test")

Names: mimic-cxr-jpg, chexpert-plus, rexgradient, iu-xray, echo-json (aliases accepted).
"""

from __future__ import annotations

import os
from pathlib import Path

from echocxr.data.loaders import chexpert_plus, echo_json, iu_xray, mimic_cxr, rexgradient  # noqa: F401
from echocxr.data.loaders.base import (
    DatasetLoader,
    LoadStats,
    SkippedImagesWarning,
    get_loader,
    loader_names,
    register_loader,
)
from echocxr.data.manifest import Sample, save_manifest

__all__ = [
    "DatasetLoader",
    "LoadStats",
    "SkippedImagesWarning",
    "convert_dataset",
    "get_loader",
    "load_dataset",
    "loader_names",
    "register_loader",
]


def load_dataset(
    name: str,
    root: str | os.PathLike,
    split: str | None = None,
    language: str | None = None,
    *,
    image_check: str = "open",
    limit: int | None = None,
    **options,
) -> list[Sample]:
    """Read dataset `name` from its published layout at `root` into manifest samples.

    `split`: "train" | "val" | "test" (None = all); `language`: None keeps the dataset's own;
    `image_check`: "none" | "exists" | "open" | "decode"; `options` go to the loader (e.g.
    ``reports=`` for MIMIC-CXR, ``views=("PA", "AP")``, ``image_root=`` for echo-json).
    Missing or unreadable images are skipped with one summary `SkippedImagesWarning`.
    """
    loader = get_loader(name, **options)
    return loader.load(root, split=split, language=language, image_check=image_check, limit=limit)


def convert_dataset(
    name: str,
    root: str | os.PathLike,
    output: str | os.PathLike,
    split: str | None = None,
    language: str | None = None,
    *,
    image_check: str = "open",
    limit: int | None = None,
    dedup_threshold: float | None = None,
    **options,
) -> list[Sample]:
    """`load_dataset`, optionally semantic de-duplication, then write the manifest json atomically."""
    samples = load_dataset(name, root, split, language, image_check=image_check, limit=limit, **options)
    if dedup_threshold is not None:
        from echocxr.data.dedup import dedup_samples  # lazy: pulls in sentence-transformers

        samples = dedup_samples(samples, threshold=dedup_threshold)
    save_manifest(samples, Path(output))
    return samples
