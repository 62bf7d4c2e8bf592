"""Per-block masking noise for RAD training, reproducible from (seed, epoch, example index).

Randomness is keyed by the example, not by the process, so a run split over N ranks (or resumed after a
crash) draws exactly the masks a single uninterrupted process would.
"""

from __future__ import annotations

import torch


def example_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_033 + index)


def mask_blocks(tokens: list[int], block_length: int, mask_id: int, gen: torch.Generator,
                t_min: float = 1e-3) -> tuple[list[int], list[float]]:
    """Per block draw t in (0, 1], mask round(t*L) (at least one) of its tokens. Returns noisy ids and each
    block's t."""
    L = block_length
    out = list(tokens)
    ts = []
    for b0 in range(0, len(tokens), L):
        t = float(torch.rand((), generator=gen)) * (1 - t_min) + t_min
        n = max(1, round(t * L))
        perm = torch.randperm(L, generator=gen)[:n]
        for j in perm.tolist():
            out[b0 + j] = mask_id
        ts.append(n / L)
    return out, ts


def step_generator(seed: int, step: int) -> torch.Generator:
    """Randomness shared by every example of one optimizer step (e.g. d3LLM's per-step mask ratio): the same on
    every rank and micro-batch of that step, and again after a resume."""
    return torch.Generator().manual_seed((seed * 1_000_003 + 999_983) * 1_000_033 + step)
