"""Token choice from logits (greedy / temperature / top-k / top-p) and the remasking rules.

Remasking follows the official ECHO/SDAR code: a step may commit `k` tokens where `k` comes from an even
split of the block length over the steps; `low_confidence_dynamic` commits every masked position whose
confidence beats the threshold when that is at least `k` of them. `low_entropy_dynamic` is the same rule on
the entropy of each position's distribution (commit those at or below the threshold, in nats, at least the `k`
lowest): how dParallel's and d3LLM's code decode.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from echocxr.backbones.settings import REMASKING_STRATEGIES  # noqa: F401  (re-exported)


def sample_tokens(logits: torch.Tensor, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                  generator: torch.Generator | None = None,
                  tie_ratio: float = 0.0,
                  prefer: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits (..., V) -> (tokens (...), confidence of each token (...), distribution (..., V)).

    The distribution is the one the token was drawn from (after temperature and filtering); greedy uses
    the plain softmax. Works in float32 whatever the model dtype. `tie_ratio` > 0 (greedy only) is a
    canonical tie-break: of the tokens whose probability is at least `tie_ratio` times the top one, the
    lowest vocabulary id wins. Between equally valid phrasings the plain argmax follows tiny, context-
    dependent differences; the canonical choice is the same in every context, so a one-step student
    distilled on such trajectories has a target it can predict. `prefer` (logits of the same shape) replaces
    the lowest id as the tie-break: of the near-top tokens, the one `prefer` ranks highest (the `one_step`
    tie-break of DecodeConfig).
    """
    shape = logits.shape[:-1]
    flat = logits.reshape(-1, logits.shape[-1]).float()
    if temperature <= 0:
        probs = F.softmax(flat, dim=-1)
        if tie_ratio > 0:
            near = flat >= flat.amax(dim=-1, keepdim=True) + math.log(tie_ratio)
            if prefer is None:
                tokens = near.to(torch.uint8).argmax(dim=-1)  # the first (lowest-id) near-top token
            else:
                ranked = prefer.reshape(flat.shape).float().masked_fill(~near, float("-inf"))
                tokens = ranked.argmax(dim=-1)
        else:
            tokens = flat.argmax(dim=-1)
    else:
        scaled = flat / temperature
        if top_k > 0:
            kth = torch.topk(scaled, min(top_k, scaled.shape[-1])).values[:, -1:]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        if top_p < 1.0:
            sorted_logits, order = torch.sort(scaled, descending=True)
            cum = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
            drop_sorted = cum > top_p
            drop_sorted[:, 1:] = drop_sorted[:, :-1].clone()
            drop_sorted[:, 0] = False
            drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
            scaled = scaled.masked_fill(drop, float("-inf"))
        probs = F.softmax(scaled, dim=-1)
        tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    conf = probs.gather(-1, tokens[:, None]).squeeze(-1)
    return tokens.view(shape), conf.view(shape), probs.view(*shape, -1)


def image_tie_preference(logits: torch.Tensor, blind: torch.Tensor, margin: float) -> torch.Tensor:
    """`prefer` for sample_tokens' image tie-break: near-top tokens compete, lowest id first, only when the image
    moves their log-probability (against `blind`, the same step's logits under a blank image) within `margin`
    nats of what it does for the top token; the others keep out. Phrasings of one statement are chosen
    independently of the image, so a tie between them goes the same way in every context, while a tie that the
    image decides (a finding against its negation) stays with the plain argmax."""
    flat = logits.reshape(-1, logits.shape[-1]).float()
    gain = F.log_softmax(flat, dim=-1) - F.log_softmax(blind.reshape(flat.shape).float(), dim=-1)
    top_gain = gain.gather(-1, flat.argmax(dim=-1, keepdim=True))
    V = flat.shape[-1]
    lowest_first = -torch.arange(V, device=flat.device, dtype=torch.float32).expand_as(flat)
    # a -inf blind logit (a suppressed token) gives a NaN or inf gain: such a token never competes
    close = (gain - top_gain).abs() <= margin
    return torch.where(close, lowest_first, torch.full_like(flat, -float(V) - 1.0)).view(logits.shape)


def transfer_schedule(block_length: int, steps: int) -> list[int]:
    """How many tokens each of `steps` rounds commits: an even split, remainder to the first rounds."""
    base, rem = divmod(block_length, steps)
    return [base + (1 if i < rem else 0) for i in range(steps)]


def select_transfer(masked: torch.Tensor, confidence: torch.Tensor, k: int, strategy: str,
                    threshold: float = 0.85, probs: torch.Tensor | None = None) -> torch.Tensor:
    """Which masked positions to commit this round. masked/confidence: (A, L) -> bool (A, L); `probs` (A, L, V),
    the distributions the tokens were drawn from, is needed by `low_entropy_dynamic` only."""
    if strategy not in REMASKING_STRATEGIES:
        raise ValueError(f"unknown remasking strategy {strategy!r} (use one of {REMASKING_STRATEGIES})")
    if strategy == "low_entropy_dynamic":
        if probs is None:
            raise ValueError("low_entropy_dynamic needs the distributions (probs)")
        p = probs.float()
        entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)
        # the same rule on -entropy: at least the k surest, all of them when enough are at or below the bound
        return select_transfer(masked, -entropy, k, "low_confidence_dynamic", -threshold - 1e-12)
    n_masked = masked.sum(dim=1)
    kk = torch.clamp(n_masked, max=k)  # per row
    L = masked.shape[1]
    if strategy == "sequential":
        rank = masked.long().cumsum(dim=1)  # 1-based rank among masked positions, left to right
        return masked & (rank <= kk[:, None])
    conf = confidence.masked_fill(~masked, float("-inf"))
    order = torch.argsort(conf, dim=1, descending=True, stable=True)
    top = torch.zeros_like(masked)
    top.scatter_(1, order, torch.arange(L, device=masked.device)[None, :].expand_as(order) < kk[:, None])
    top &= masked
    if strategy == "low_confidence_static":
        return top
    high = masked & (confidence > threshold)
    use_high = high.sum(dim=1) >= kk
    return torch.where(use_high[:, None], high, top)
