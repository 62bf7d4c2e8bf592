"""Training objectives over response slots: AR cross-entropy, masked-diffusion CE (RAD) and DCD's KL.

All losses are per-example means then a batch mean, so a global batch split over ranks or
micro-batches of equal size gives the same gradient as one big batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def per_example_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """values, weights (B, R) -> mean over examples of the weighted mean over their slots."""
    denom = weights.sum(dim=1).clamp_min(1e-8)
    per = (values * weights).sum(dim=1) / denom
    has = weights.sum(dim=1) > 0
    return per[has].mean() if bool(has.any()) else values.sum() * 0.0


def token_ce(slot_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, R, V), (B, R) -> (B, R) CE with -100 giving 0."""
    return F.cross_entropy(slot_logits.float().transpose(1, 2), targets.clamp_min(0), reduction="none") * (targets >= 0)


def ar_loss(slot_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return per_example_mean(token_ce(slot_logits, targets), (targets >= 0).float())


def mdlm_loss(slot_logits: torch.Tensor, targets: torch.Tensor, noised: torch.Tensor,
              inv_t: torch.Tensor | None = None) -> torch.Tensor:
    """CE on masked positions of the noisy copy; `inv_t` (B, R) gives the optional MDLM 1/t weighting."""
    w = (noised & (targets >= 0)).float()
    ce = token_ce(slot_logits, targets)
    if inv_t is not None:
        ce = ce * inv_t
    return per_example_mean(ce, w)


def sparse_log_probs(slot_logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Student log-probs (B, R, K) at the teacher's support `index` (B, R, K)."""
    logp = F.log_softmax(slot_logits.float(), dim=-1)
    return logp.gather(-1, index)


def dcd_loss(slot_logits: torch.Tensor, t_index: torch.Tensor, t_probs: torch.Tensor, step_weight: torch.Tensor,
             valid: torch.Tensor, eos_mask: torch.Tensor, eos_targets: torch.Tensor, eos_ce: float = 1.0,
             reverse: bool = False) -> tuple[torch.Tensor, dict]:
    """Direct Conditional Distillation (ECHO-SPEC §4, phase 2).

    KL(P_tch || p_student) per slot (forward; `reverse` gives the RKL ablation, over the teacher's stored
    support with the student renormalised there), weighted by `step_weight` (SW: proportional to the step
    at which the teacher committed the slot; all ones without SW), plus `eos_ce` times a CE pulling slots where
    the teacher wrote an end-of-response token (`eos_mask`; a model may have several) to a one-hot of that
    token (`eos_targets`, (B, R)).
    """
    p = t_probs / t_probs.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    logq = sparse_log_probs(slot_logits, t_index)
    logp = torch.log(p.clamp_min(1e-12))
    if reverse:
        q = torch.softmax(logq, dim=-1)
        kl = (q * (torch.log(q.clamp_min(1e-12)) - logp)).sum(-1)
    else:
        kl = (p * (logp - logq)).sum(-1)
    w = step_weight * valid.float()
    loss = per_example_mean(kl, w)
    metrics = {"kl": float(loss.detach())}
    if eos_ce > 0 and bool((eos_mask & valid).any()):
        ce = -F.log_softmax(slot_logits.float(), dim=-1).gather(-1, eos_targets.clamp_min(0)[..., None]).squeeze(-1)
        eos_term = per_example_mean(ce, (eos_mask & valid).float())
        loss = loss + eos_ce * eos_term
        metrics["eos_ce"] = float(eos_term.detach())
    return loss, metrics
