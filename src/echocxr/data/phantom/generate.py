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
from contextlib import contextmanager
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
                      progress: bool = True, workers: int | None = None) -> dict:
    """Render `n` studies into `out` and write the manifests; returns the summary also saved as phantom.json.

    `workers` processes render in parallel (default: one per CPU, at most 16); every study depends on
    (seed, index) alone, so the files are the same bytes whatever the number of workers."""
    from tqdm import tqdm

    from echocxr.data.phantom.render import VIEWS

    if n < 1:
        raise UserError(f"--n must be at least 1, got {n}")
    if not 32 <= image_size <= 4096:
        raise UserError(f"--image-size must be between 32 and 4096, got {image_size}")
    workers = min(_usable_cpus(), 16) if workers is None else workers
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
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

    job = _StudyJob(seed, image_size, views, str(img_dir))
    with _study_map(workers if n >= 64 else 1) as map_fn:
        studies = map_fn(job, range(n))
        for index, (case, paths, reports) in enumerate(tqdm(studies, total=n, desc="phantoms", unit="study",
                                                             disable=not progress)):
            sid = sample_id(seed, index)
            split = split_of[index]
            counts[split].update(case.labels)
            normal[split] += case.is_normal
            for (lang, var), (f, i) in reports.items():
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


@dataclass(frozen=True)
class _StudyJob:
    """Render and report one study (a picklable callable for the worker processes)."""

    seed: int
    image_size: int
    views: tuple[str, ...]
    img_dir: str

    def __call__(self, index: int) -> tuple[PhantomCase, list[str], dict[tuple[str, str], tuple[str, str]]]:
        from PIL import Image

        from echocxr.data.phantom.render import render_case

        case = sample_case(self.seed, index)
        sid = sample_id(self.seed, index)
        paths = []
        for view, arr in zip(self.views, render_case(case, self.image_size, self.views), strict=True):
            path = Path(self.img_dir) / f"{sid}_{view}.png"
            Image.fromarray(arr, mode="L").save(path, format="PNG", compress_level=3)
            paths.append(str(path))
        reports = {(lang, var): write_report(case, lang, var) for lang in LANGUAGES for var in VARIANTS}
        return case, paths, reports


@contextmanager
def _study_map(workers: int):
    """An order-keeping map over studies: in this process, or over `workers` forked processes (the work is
    numpy and PIL only, safe to fork)."""
    if workers == 1:
        yield map
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(workers, mp_context=mp.get_context(method)) as pool:
        yield lambda fn, items: pool.map(fn, items, chunksize=32)


def _usable_cpus() -> int:
    """CPUs this process may run on (a container's share, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
