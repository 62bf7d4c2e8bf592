"""Semantic de-duplication: the greedy rule on synthetic vectors, then the offline MiniLM on real IU texts."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from echocxr.data.dedup import dedup_samples, dedup_texts, default_model_path, greedy_dedup, load_embedder
from echocxr.data.loaders.iu_xray import iter_iu_archive
from echocxr.data.manifest import Sample
from echocxr.errors import UserError


def unit(*rows) -> np.ndarray:
    a = np.asarray(rows, dtype=np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_greedy_keeps_first_and_compares_only_with_kept():
    # b ~ a (dropped); c is close to b but not to a: since b was dropped, c survives.
    a, b, c, d = [1, 0, 0], [0.95, 0.31, 0], [0.7, 0.714, 0], [0, 0, 1]
    emb = unit(a, b, c, d, a)
    assert greedy_dedup(emb, threshold=0.9) == [0, 2, 3]
    assert greedy_dedup(emb, threshold=0.999) == [0, 1, 2, 3]  # only the exact copy goes
    # The block-wise implementation gives exactly the one-by-one answer.
    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, 8))
    many = unit(*np.concatenate([base, base[:25] + rng.normal(scale=0.05, size=(25, 8))]))
    assert greedy_dedup(many, 0.97, block=7) == greedy_dedup(many, 0.97, block=1000)
    with pytest.raises(UserError):
        greedy_dedup(emb, threshold=2.0)
    assert greedy_dedup(np.zeros((0, 4)), 0.9) == []


def test_import_is_lazy():
    """Importing the module must not pull in sentence-transformers/torch (CLI start-up time)."""
    code = "import echocxr.data.dedup, sys; print('sentence_transformers' in sys.modules)"
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# Two different real IU reports that say the same thing ("... soft tissues are unchanged" vs "... are
# normal"); found once with this module over the first 800 reports (cosine 0.994).
NEAR_PAIR = ("CXR1522", "CXR154")


@pytest.fixture(scope="module")
def iu_texts() -> dict[str, str]:
    from tests.conftest import iu_archive_or_skip

    tgz = iu_archive_or_skip()
    return {r.uid: f"{r.sections.findings} {r.sections.impression}".strip() for r in iter_iu_archive(tgz)}


def distinct(iu_texts: dict[str, str], n: int) -> list[str]:
    """The first n long real reports without "XXXX" redactions (pairwise cosine < 0.85 for these)."""
    out: list[str] = []
    for t in iu_texts.values():
        if len(t) > 120 and "XXXX" not in t and t not in out:
            out.append(t)
        if len(out) == n:
            return out
    raise AssertionError("not enough IU reports")


@pytest.fixture(scope="module")
def embedder():
    try:
        default_model_path()
    except UserError as exc:
        pytest.skip(str(exc))
    return load_embedder(device="cpu")


def test_real_near_duplicate_pair_is_dropped(embedder, iu_texts):
    a, b = (iu_texts[u] for u in NEAR_PAIR)
    assert a != b
    others = distinct(iu_texts, 4)
    corpus = [a, others[0], others[1], b, others[2], others[0], others[3]]
    # The later near-duplicate (b) and the exact copy go; first occurrences stay, order is kept.
    assert dedup_texts(corpus, threshold=0.95, model=embedder) == [0, 1, 2, 4, 6]
    # A stricter threshold keeps the reworded report but still drops the exact copy.
    assert dedup_texts(corpus, threshold=0.999, model=embedder) == [0, 1, 2, 3, 4, 6]


def test_dedup_samples_uses_reference_text(embedder, iu_texts):
    texts = distinct(iu_texts, 3)
    samples = [Sample(f"s{i}", ["x.png"], t, "") for i, t in enumerate([texts[0], texts[1], texts[0], texts[2]])]
    assert [s.sample_id for s in dedup_samples(samples, 0.98, model=embedder)] == ["s0", "s1", "s3"]
