"""Write a CXR-Phantom benchmark set: PNG images plus one manifest per split, language and variant.

Layout of `out`:
    images/<sample_id>_<view>.png
    <split>_<lang>.json        normalised reports (the training/eval target)
    <split>_<lang>_raw.json    the same studies reported by exception
    phantom.json               settings, split sizes and label counts (no timestamps: same seed, same bytes)
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from echocxr.data.manifest import LANGUAGES, Sample, atomic_write_text, reference_text, save_manifest
from echocxr.data.phantom.findings import FINDING_LABELS, PhantomCase, sample_case
from echocxr.data.phantom.grammar import VARIANTS, write_report
from echocxr.errors import UserError

SPLITS = ("train", "val", "test")
FORMAT_VERSION = 1


@dataclass
class PhantomReport:
    case: PhantomCase
    language: str
    variant: str
    findings: str
    impression: str

    @property
    def reference(self) -> str:
        """The official reference string (`Findings: ... Impression: ...` / `所见：... 结论：...`)."""
        return reference_text(self.findings, self.impression, self.language)


def phantom_reports(seed: int, n: int, languages: Sequence[str] = LANGUAGES,
                    variants: Sequence[str] = VARIANTS, start: int = 0) -> Iterator[PhantomReport]:
    """Reports of studies start..start+n-1 without rendering any image (labeler and tokenizer work)."""
    for index in range(start, start + n):
        case = sample_case(seed, index)
        for lang in languages:
            for variant in variants:
                f, i = write_report(case, lang, variant)
                yield PhantomReport(case, lang, variant, f, i)


def split_sizes(n: int, fractions: Sequence[float]) -> dict[str, int]:
    """Studies per split; the first splits are rounded, the last takes the remainder."""
    if len(fractions) != len(SPLITS) or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise UserError(f"--splits must be three non-negative fractions summing to 1, got {list(fractions)}")
    n_train, n_val = round(n * fractions[0]), round(n * fractions[1])
    n_val = min(n_val, n - n_train)
    return {"train": n_train, "val": n_val, "test": n - n_train - n_val}


def sample_id(seed: int, index: int) -> str:
    return f"phantom-s{seed}-{index:06d}"


def write_phantom_set(out: str | os.PathLike, n: int, seed: int = 0, image_size: int = 256,
                      views: Sequence[str] = ("frontal",), splits: Sequence[float] = (0.8, 0.1, 0.1),
                      progress: bool = True) -> dict:
    """Render `n` studies into `out` and write the manifests; returns the summary also saved as phantom.json."""
    from PIL import Image
    from tqdm import tqdm

    from echocxr.data.phantom.render import VIEWS, render_case

    if n < 1:
        raise UserError(f"--n must be at least 1, got {n}")
    if not 32 <= image_size <= 4096:
        raise UserError(f"--image-size must be between 32 and 4096, got {image_size}")
    views = tuple(views)
    bad = [v for v in views if v not in VIEWS]
    if bad or not views or len(set(views)) != len(views):
        raise UserError(f"--views must list distinct views from {', '.join(VIEWS)}, got {','.join(views)}")
    sizes = split_sizes(n, splits)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out exists and is not a directory: {out}")
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)

    manifests: dict[tuple[str, str, str], list[Sample]] = {
        (s, lang, var): [] for s in SPLITS for lang in LANGUAGES for var in VARIANTS}
    counts: dict[str, Counter] = {s: Counter() for s in SPLITS}
    normal: Counter = Counter()
    bounds, start = [], 0
    for s in SPLITS:
        bounds.append((s, start, start + sizes[s]))
        start += sizes[s]
    split_of = {i: s for s, lo, hi in bounds for i in range(lo, hi)}

    for index in tqdm(range(n), desc="phantoms", unit="study", disable=not progress):
        case = sample_case(seed, index)
        sid = sample_id(seed, index)
        paths = []
        for view, arr in zip(views, render_case(case, image_size, views), strict=True):
            path = img_dir / f"{sid}_{view}.png"
            Image.fromarray(arr, mode="L").save(path, format="PNG", compress_level=3)
            paths.append(str(path))
        split = split_of[index]
        counts[split].update(case.labels)
        normal[split] += case.is_normal
        for lang in LANGUAGES:
            for var in VARIANTS:
                f, i = write_report(case, lang, var)
                manifests[(split, lang, var)].append(Sample(sid, paths, f, i, case.labels, lang))

    for (split, lang, var), samples in manifests.items():
        suffix = "" if var == "normalised" else "_raw"
        save_manifest(samples, out / f"{split}_{lang}{suffix}.json")
    summary = {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "n": n,
        "image_size": image_size,
        "views": list(views),
        "split_sizes": sizes,
        "normal_fraction": {s: round(normal[s] / sizes[s], 4) if sizes[s] else None for s in SPLITS},
        "label_counts": {s: {lab: counts[s][lab] for lab in FINDING_LABELS} for s in SPLITS},
        "vocabulary": list(FINDING_LABELS),
        "manifests": sorted(f"{s}_{lang}{'' if v == 'normalised' else '_raw'}.json"
                            for s in SPLITS for lang in LANGUAGES for v in VARIANTS),
    }
    atomic_write_text(out / "phantom.json", json.dumps(summary, ensure_ascii=False, indent=1))
    return summary
