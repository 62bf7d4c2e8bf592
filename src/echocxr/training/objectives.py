"""Stage objectives: each turns a micro-batch of examples into a loss through one model forward.

objective(model, examples, indices, epoch) -> (loss, metrics); `indices` key the noise so any split of a
global batch over ranks draws the same masks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from echocxr.diffusion.losses import ar_loss, dcd_loss, mdlm_loss
from echocxr.diffusion.noise import example_generator, mask_blocks
from echocxr.diffusion.sequences import SequenceBatch, build_ar_batch, build_diffusion_batch, pad_to_blocks
from echocxr.training.config import TrainConfig

if TYPE_CHECKING:
    from echocxr.training.trajectories import Trajectory


@dataclass
class TokenIds:
    pad: int
    mask: int
    eos: int  # the tokenizer's: pads a response to whole blocks
    stops: tuple[int, ...] = ()  # every id that ends a response (the engine stops on each); () = (eos,)

    @property
    def stop_ids(self) -> tuple[int, ...]:
        return self.stops or (self.eos,)


class PromptPositions:
    """Cached position ids of each prompt (M-RoPE for Qwen2.5-VL): they never change during training."""

    def __init__(self, base_model, is_vision: bool):
        self.base, self.is_vision, self.cache = base_model, is_vision, {}

    def __call__(self, prompt) -> torch.Tensor:
        key = id(prompt)
        if key not in self.cache:
            if not self.is_vision or prompt.image_grid_thw is None:
                pos = torch.arange(prompt.length)[None].expand(3 if self.is_vision else 1, -1)
            else:
                dev = next(self.base.parameters()).device
                p, _ = self.base.model.get_rope_index(prompt.input_ids[None].to(dev),
                                                      prompt.mm_token_type_ids[None].to(dev),
                                                      image_grid_thw=prompt.image_grid_thw.to(dev))
                pos = p[:, 0].cpu()
            self.cache[key] = (prompt, pos)  # keep the prompt alive so its id stays unique
        return self.cache[key][1]


def slot_logits(model, batch: SequenceBatch, is_vision: bool, cols: torch.Tensor | None = None,
                with_hidden: bool = False):
    """Logits (B, R, V) at the batch's target columns, computing the LM head only where needed;
    `with_hidden`: also the last hidden states (B, R, H) there."""
    device = next(model.parameters()).device
    batch = batch.to(device)
    cols = batch.target_cols if cols is None else cols.to(device)
    keep = torch.unique(cols)
    dtype = next(model.parameters()).dtype
    out = model(**batch.model_inputs(dtype, is_vision), logits_to_keep=keep, output_hidden_states=with_hidden)
    where = torch.searchsorted(keep, cols)
    logits = out.logits.gather(1, where[..., None].expand(-1, -1, out.logits.shape[-1]))
    if not with_hidden:
        return logits
    h = out.hidden_states[-1]
    return logits, h.gather(1, cols[..., None].expand(-1, -1, h.shape[-1]))


class ARObjective:
    """Next-token CE; with a `label_head` (training only) also a finding-label BCE read linearly from the
    language model's hidden state at every response position, weighted `label_weight`.

    Why the label term: the report CE gives the image little weight (a handful of finding-bearing tokens per
    report), and a small LM settles on the grammar's prior; asking every position's state to carry the labels
    makes it read the vision tokens (benchmarks/results/builtin_model/STUDY.md)."""

    def __init__(self, positions: PromptPositions, ids: TokenIds, is_vision: bool,
                 label_head: torch.nn.Module | None = None, label_weight: float = 0.0):
        self.positions, self.ids, self.is_vision = positions, ids, is_vision
        self.label_head, self.label_weight = label_head, label_weight

    def __call__(self, model, examples, indices, epoch):
        batch = build_ar_batch([e.prompt for e in examples], [e.response_ids for e in examples],
                               self.positions if self.is_vision else None, self.ids.pad)
        if self.label_head is None:
            logits = slot_logits(model, batch, self.is_vision)
            return ar_loss(logits, batch.targets.to(logits.device)), {}
        logits, hidden = slot_logits(model, batch, self.is_vision, with_hidden=True)
        targets = batch.targets.to(logits.device)
        ce = ar_loss(logits, targets)
        bce = label_bce(self.label_head, hidden, examples, targets >= 0)
        return ce + self.label_weight * bce, {"label_bce": float(bce.detach())}


def label_bce(head: torch.nn.Module, hidden: torch.Tensor, examples, valid: torch.Tensor) -> torch.Tensor:
    """The label term: BCE of each example's finding labels read by `head` from every `valid` position's
    hidden state (B, R, H), averaged over an example's positions, then over the batch."""
    from echocxr.training.vision import label_targets

    y = label_targets(examples, head.labels).to(hidden.device)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        head(hidden), y[:, None].expand(-1, hidden.shape[1], -1), reduction="none").mean(-1)
    valid = valid.float()
    return ((bce * valid).sum(1) / valid.sum(1).clamp(min=1)).mean()


class RADObjective:
    """Masked-diffusion CE on the noisy copy of the response (ECHO-SPEC §3)."""

    def __init__(self, positions: PromptPositions, ids: TokenIds, is_vision: bool, cfg: TrainConfig):
        self.positions, self.ids, self.is_vision, self.cfg = positions, ids, is_vision, cfg

    def __call__(self, model, examples, indices, epoch):
        L = self.cfg.block_length
        clean, noisy, inv_t = [], [], []
        for e, i in zip(examples, indices, strict=True):
            c = pad_to_blocks(e.response_ids, L, self.ids.eos)
            n, ts = mask_blocks(c, L, self.ids.mask, example_generator(self.cfg.seed, epoch, i))
            clean.append(c)
            noisy.append(n)
            inv_t.append([1.0 / t for t in ts for _ in range(L)])
        batch = build_diffusion_batch([e.prompt for e in examples], clean, noisy, L,
                                      self.positions if self.is_vision else None, self.ids.pad, self.ids.mask,
                                      layout=self.cfg.layout)
        logits = slot_logits(model, batch, self.is_vision)
        w = None
        if self.cfg.inv_t_weight:
            R = batch.targets.shape[1]
            w = torch.tensor([r + [0.0] * (R - len(r)) for r in inv_t], device=logits.device)
        loss = mdlm_loss(logits, batch.targets.to(logits.device), batch.noised.to(logits.device), w)
        return loss, {"masked_frac": float(batch.noised.float().sum() / (batch.targets >= 0).sum())}


class TrajectoryObjective:
    """Shared plumbing of DCD and the baselines: the teacher trajectory of each example, RAD batches with
    some slots masked, the model forward."""

    def __init__(self, positions: PromptPositions, ids: TokenIds, is_vision: bool, cfg: TrainConfig,
                 trajectories: Mapping[str, Trajectory]):
        self.positions, self.ids, self.is_vision, self.cfg, self.traj = positions, ids, is_vision, cfg, trajectories

    def trajectories(self, examples) -> list[Trajectory]:
        return [self.traj[e.key] for e in examples]

    def batch(self, prompts: list, clean: list[list[int]], masks: list[list[bool]],
              block_length: int | None = None) -> SequenceBatch:
        """RAD sequences of `clean` with the `masks` slots masked, in blocks of `block_length` (default: cfg's)."""
        noisy = [[self.ids.mask if m else t for t, m in zip(c, mk, strict=True)] for c, mk in zip(clean, masks, strict=True)]
        return build_diffusion_batch(prompts, clean, noisy, block_length or self.cfg.block_length,
                                     self.positions if self.is_vision else None, self.ids.pad, self.ids.mask,
                                     layout=self.cfg.layout)

    def logits(self, model, batch: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, targets, noised) on the logits' device."""
        lg = slot_logits(model, batch, self.is_vision)
        return lg, batch.targets.to(lg.device), batch.noised.to(lg.device)



class DCDObjective(TrajectoryObjective):
    """One-step alignment to the teacher's on-policy trajectory (ECHO-SPEC §4, phase 2). With a `label_head`
    (training only) also AR's label term at the masked slots, weighted `label_weight`: a one-step block commits
    all its tokens from states that have seen none of them, so each must carry the image's findings itself."""

    def __init__(self, positions: PromptPositions, ids: TokenIds, is_vision: bool, cfg: TrainConfig,
                 trajectories: Mapping[str, Trajectory], label_head: torch.nn.Module | None = None):
        super().__init__(positions, ids, is_vision, cfg, trajectories)
        self.label_head = label_head

    def __call__(self, model, examples, indices, epoch):
        trajs = self.trajectories(examples)
        clean = [t.tokens for t in trajs]
        batch = self.batch([e.prompt for e in examples], clean, [[True] * len(c) for c in clean])
        hidden = None
        if self.label_head is None:
            logits, targets, _ = self.logits(model, batch)
        else:
            logits, hidden = slot_logits(model, batch, self.is_vision, with_hidden=True)
            targets = batch.targets.to(logits.device)
        B, R = targets.shape
        hard = self.cfg.dcd_target == "hard"
        K = 1 if hard else max(t.index.shape[1] for t in trajs)
        dev = logits.device
        t_index = torch.zeros(B, R, K, dtype=torch.long, device=dev)
        t_probs = torch.zeros(B, R, K, device=dev)
        weight = torch.zeros(B, R, device=dev)
        valid = torch.zeros(B, R, dtype=torch.bool, device=dev)
        for b, t in enumerate(trajs):
            n, k = t.index.shape
            if hard:  # the committed token with probability 1: the KL below is then its cross-entropy
                t_index[b, :n, 0] = torch.tensor(t.tokens, device=dev)
                t_probs[b, :n, 0] = 1.0
            else:
                t_index[b, :n, :k] = t.index.to(dev)
                t_probs[b, :n, :k] = t.probs.to(dev).float()
            steps = t.steps.to(dev).float()
            weight[b, :n] = steps / steps.mean() if self.cfg.sw else 1.0
            valid[b, :n] = True
        eos_mask = torch.isin(targets, torch.tensor(self.ids.stop_ids, device=targets.device))
        loss, metrics = dcd_loss(logits, t_index, t_probs, weight, valid, eos_mask, targets,
                                 eos_ce=self.cfg.eos_ce, reverse=self.cfg.rkl)
        if hidden is not None:
            bce = label_bce(self.label_head, hidden, examples, valid)
            loss = loss + self.cfg.label_weight * bce
            metrics["label_bce"] = float(bce.detach())
        return loss, metrics
