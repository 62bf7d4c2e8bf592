"""The paper's distillation baselines (ECHO-SPEC §4), trained from the same teacher trajectories as DCD.

Each objective has the loop's signature, objective(model, examples, indices, epoch) -> (loss, metrics), and
uses the teacher's committed tokens (`Trajectory.tokens`, the pseudo-labels b^) as its targets:

- dParallel (Chen et al. 2025, "certainty-forcing distillation"): CE on pseudo-labels at the masked slots of
  a partially masked block and its complementary mask, plus temperature-scaled entropy minimisation on the
  slots the student already gets right.
- CD4LM (Liang et al. 2026, "discrete-space consistency distillation"): a high-noise view and a nested
  low-noise view of the same block; KL from the (detached, softened) low-noise prediction to the high-noise
  one, mixed with CE by lambda.
- d3LLM (Qian et al. 2025, "pseudo-trajectory distillation"): pseudo-label CE where the masked slots follow
  the teacher's commit order (last committed masked first) and the mask ratio grows with training progress.
- T3D (Zhang et al. 2026, trajectory self-distillation): DPO-style preference of the teacher's block over the
  student's own greedy one-step block, against a frozen copy of the initial student (DDO form optional).

The pure loss maths lives in functions over logits tensors so it can be checked by hand. All losses are a
mean over examples of a per-example mean over its scored slots (or blocks); an example with nothing to score
counts as 0 rather than being dropped, so equal-sized micro-batches give exactly the gradient of one batch.
All randomness is drawn from `example_generator(seed, epoch, index)`: ranks, micro-batch splits and resumed
runs see the masks a single uninterrupted run would.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from echocxr.diffusion.losses import token_ce
from echocxr.diffusion.noise import example_generator
from echocxr.diffusion.sequences import SequenceBatch
from echocxr.training.config import TrainConfig
from echocxr.training.objectives import PromptPositions, TokenIds, TrajectoryObjective, slot_logits
from echocxr.training.trajectories import Trajectory

BASELINES = ("dparallel", "cd4lm", "d3llm", "t3d")


# ----------------------------------------------------------------------------------------------------------
# pure maths over logits
# ----------------------------------------------------------------------------------------------------------

def mean_over_examples(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """values, weights (B, N) -> mean over all B examples of each one's weighted mean (0 if it has no weight).

    Unlike `per_example_mean`, empty rows stay in the denominator, so the mean of equal micro-batches equals
    the full-batch value even when some rows (e.g. a complementary mask's empty copy) score nothing.
    """
    w = weights.to(values.dtype)
    denom = w.sum(dim=1)
    per = (values * w).sum(dim=1) / denom.clamp_min(1e-8)
    return torch.where(denom > 0, per, torch.zeros_like(per)).mean()


def tempered_entropy(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(..., V) -> (...) entropy of softmax(logits / T); T < 1 sharpens, so minimising it pushes harder."""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def certainty_forcing_loss(logits: torch.Tensor, targets: torch.Tensor, noised: torch.Tensor,
                           entropy_weight: float, temperature: float) -> tuple[torch.Tensor, dict]:
    """dParallel: CE(pseudo-label) on masked slots + w * H_T on masked slots whose argmax is already right.

    Entropy is only minimised where the student is correct, so certainty is forced towards the teacher's
    token and never onto a wrong one. (B, R, V), (B, R), (B, R) -> loss, metrics.
    """
    scored = noised & (targets >= 0)
    ce = mean_over_examples(token_ce(logits, targets), scored)
    correct = scored & (logits.detach().argmax(-1) == targets)
    ent = mean_over_examples(tempered_entropy(logits, temperature), correct)
    loss = ce + entropy_weight * ent
    frac = float(correct.sum()) / max(1, int(scored.sum()))
    return loss, {"ce": float(ce.detach()), "entropy": float(ent.detach()), "correct_frac": frac}


def consistency_loss(high_logits: torch.Tensor, low_logits: torch.Tensor, targets: torch.Tensor,
                     high_mask: torch.Tensor, low_mask: torch.Tensor, lam: float,
                     temperature: float) -> tuple[torch.Tensor, dict]:
    """CD4LM: lam * T^2 * KL(P_low || softmax(high / T)) + (1 - lam) * CE(high, pseudo-label), on high-mask slots.

    P_low is softmax(low / T), detached, where the low-noise view also masks the slot; where it can see the
    token, P_low is that token one-hot (a RAD model is never trained to predict at visible noisy slots, so its
    output there is not a prediction). T^2 keeps the KL's gradient scale independent of T (Hinton et al.).
    """
    T = temperature
    V = high_logits.shape[-1]
    scored = high_mask & (targets >= 0)
    logq = F.log_softmax(high_logits.float() / T, dim=-1)
    p_soft = torch.softmax(low_logits.detach().float() / T, dim=-1)
    p_hard = F.one_hot(targets.clamp_min(0), V).float()
    p = torch.where(low_mask[..., None], p_soft, p_hard)
    kl = (p * (torch.log(p.clamp_min(1e-12)) - logq)).sum(-1)
    kl_m = mean_over_examples(kl, scored) * T * T
    ce_m = mean_over_examples(token_ce(high_logits, targets), scored)
    loss = lam * kl_m + (1 - lam) * ce_m
    return loss, {"kl": float(kl_m.detach()), "ce": float(ce_m.detach())}


def block_logprob_sums(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
                       block_length: int) -> torch.Tensor:
    """(B, R, V), (B, R), (B, R) -> (B, R / L): sum of log p(label) over each block's valid slots."""
    logp = F.log_softmax(logits.float(), dim=-1).gather(-1, labels.clamp_min(0)[..., None])[..., 0]
    logp = logp * valid
    B, R = labels.shape
    return logp.view(B, R // block_length, block_length).sum(-1)


def dpo_loss(pi_chosen: torch.Tensor, pi_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float, weight: torch.Tensor) -> torch.Tensor:
    """DPO (Rafailov et al. 2023): -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), per (B, N) pair."""
    margin = (pi_chosen - ref_chosen) - (pi_rejected - ref_rejected)
    return mean_over_examples(-F.logsigmoid(beta * margin), weight)


def ddo_loss(pi_chosen: torch.Tensor, pi_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float, weight: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """DDO (Zheng et al. 2025, used by T3D's code): -log s(beta*d_c) - alpha*log(1 - s(beta*d_r)), d = pi - ref.

    Real (chosen) and fake (rejected) samples are scored separately rather than as a pair.
    """
    real = -F.logsigmoid(beta * (pi_chosen - ref_chosen))
    fake = -alpha * F.logsigmoid(-beta * (pi_rejected - ref_rejected))  # log(1 - sigmoid(x)) = logsigmoid(-x)
    return mean_over_examples(real + fake, weight)


# ----------------------------------------------------------------------------------------------------------
# masks drawn from the example's own generator
# ----------------------------------------------------------------------------------------------------------

def nested_block_masks(n_tokens: int, block_length: int, gen: torch.Generator,
                       student_range: tuple[float, float] = (0.4, 0.9), shrink_range: tuple[float, float] = (0.3, 0.7),
                       teacher_clip: tuple[float, float] = (0.1, 0.6)) -> tuple[list[bool], list[bool]]:
    """CD4LM's paired masks per block: high ratio r_s ~ U(student_range); low ratio r_t = clip(r_s * U(shrink_range))
    over the first slots of the same permutation, so the low-noise mask is a subset of the high-noise one."""
    L = block_length
    high, low = [False] * n_tokens, [False] * n_tokens
    for b0 in range(0, n_tokens, L):
        u = torch.rand(2, generator=gen).tolist()
        r_s = student_range[0] + (student_range[1] - student_range[0]) * u[0]
        r_t = min(max(r_s * (shrink_range[0] + (shrink_range[1] - shrink_range[0]) * u[1]), teacher_clip[0]),
                  teacher_clip[1])
        n_s = min(L, max(1, round(r_s * L)))
        n_t = min(n_s, round(r_t * L))
        perm = torch.randperm(L, generator=gen).tolist()
        for k, j in enumerate(perm[:n_s]):
            high[b0 + j] = True
            low[b0 + j] = k < n_t
    return high, low


def complementary_block_masks(n_tokens: int, block_length: int, gen: torch.Generator,
                              t_min: float = 1e-3) -> tuple[list[bool], list[bool]]:
    """dParallel's paired masks: per block mask round(t*L) (>= 1) slots, t ~ U(0, 1], and its complement, so every
    slot is supervised once per example per step."""
    L = block_length
    m = [False] * n_tokens
    for b0 in range(0, n_tokens, L):
        t = float(torch.rand((), generator=gen)) * (1 - t_min) + t_min
        n = max(1, round(t * L))
        for j in torch.randperm(L, generator=gen)[:n].tolist():
            m[b0 + j] = True
    return m, [not x for x in m]


def commit_order_mask(steps: Sequence[int], block_length: int, ratio: float, gen: torch.Generator,
                      reverse_order: bool = True) -> list[bool]:
    """d3LLM: per block mask ceil(ratio * L) (>= 1) slots; with `reverse_order` the slots the teacher committed
    last go first (ties in random order), i.e. the block as the teacher saw it partway through decoding."""
    L = block_length
    n = min(L, max(1, math.ceil(ratio * L - 1e-9)))
    out = [False] * len(steps)
    for b0 in range(0, len(steps), L):
        jitter = torch.rand(L, generator=gen).tolist()
        if reverse_order:
            order = sorted(range(L), key=lambda j: (-int(steps[b0 + j]), jitter[j]))
        else:
            order = sorted(range(L), key=lambda j: jitter[j])
        for j in order[:n]:
            out[b0 + j] = True
    return out


def curriculum_ratio(progress: float, start: float = 0.25, end: float = 1.0, ramp: float = 0.75) -> float:
    """Mask ratio at training progress p in [0, 1]: linear from `start` to `end` over the first `ramp` of
    training, then held at `end` (fully masked blocks: the one-step regime the model is deployed in)."""
    p = min(max(progress, 0.0), 1.0)
    return end if ramp <= 0 else start + (end - start) * min(1.0, p / ramp)


# ----------------------------------------------------------------------------------------------------------
# objectives
# ----------------------------------------------------------------------------------------------------------

class DParallelObjective(TrajectoryObjective):
    """Certainty-forcing distillation (dParallel): pseudo-label CE + entropy minimisation on correct slots.

    As in dParallel's training code, each example is seen under a random partial mask and its complement
    (one forward of 2B rows) and the two copies' losses add, so every pseudo-label is supervised each step.
    """

    def __init__(self, *args, complementary: bool = True, **kw):
        super().__init__(*args, **kw)
        self.complementary = complementary

    def __call__(self, model, examples, indices, epoch):
        L = self.cfg.block_length
        trajs = self.trajectories(examples)
        first, second = [], []
        for t, i in zip(trajs, indices, strict=True):
            m, c = complementary_block_masks(len(t.tokens), L, example_generator(self.cfg.seed, epoch, i))
            first.append(m)
            second.append(c)
        copies = [first, second] if self.complementary else [first]
        prompts = [e.prompt for e in examples] * len(copies)
        clean = [t.tokens for t in trajs] * len(copies)
        batch = self.batch(prompts, clean, [m for c in copies for m in c])
        logits, targets, noised = self.logits(model, batch)
        B = len(examples)
        loss, metrics = None, {}
        for k in range(len(copies)):
            part, mets = certainty_forcing_loss(logits[k * B:(k + 1) * B], targets[k * B:(k + 1) * B],
                                                noised[k * B:(k + 1) * B], self.cfg.entropy_weight,
                                                self.cfg.entropy_temperature)
            loss = part if loss is None else loss + part
            for name, v in mets.items():
                metrics[name] = metrics.get(name, 0.0) + v / len(copies)
        return loss, metrics


class CD4LMObjective(TrajectoryObjective):
    """Discrete-space consistency distillation (CD4LM): the student under heavy masking matches its own
    (detached) prediction under a nested lighter masking of the same block, plus pseudo-label CE.

    Two forwards: the low-noise view without grad (it is only a target), the high-noise view with grad.
    """

    def __call__(self, model, examples, indices, epoch):
        L = self.cfg.block_length
        trajs = self.trajectories(examples)
        high, low = [], []
        for t, i in zip(trajs, indices, strict=True):
            h, lo = nested_block_masks(len(t.tokens), L, example_generator(self.cfg.seed, epoch, i))
            high.append(h)
            low.append(lo)
        prompts, clean = [e.prompt for e in examples], [t.tokens for t in trajs]
        with torch.no_grad():
            low_logits, _, low_mask = self.logits(model, self.batch(prompts, clean, low))
        high_logits, targets, high_mask = self.logits(model, self.batch(prompts, clean, high))
        return consistency_loss(high_logits, low_logits.to(high_logits.device), targets, high_mask,
                                low_mask.to(high_logits.device), self.cfg.cd4lm_lambda, self.cfg.cd4lm_temperature)


class D3LLMObjective(TrajectoryObjective):
    """Pseudo-trajectory distillation (d3LLM): pseudo-label CE on slots masked in the teacher's reverse commit
    order, with a mask ratio that grows with training progress (`curriculum_ratio`) up to fully masked blocks.

    Progress = optimizer step / cfg.max_steps. With `num_train` (the number of training examples) the step is
    recovered exactly from (indices, epoch) by inverting the loop's `global_batch_indices`, so it is the same on
    every rank, micro-batch and resumed run. Without it the objective counts the training examples it has seen
    (exact for a single uninterrupted run, restarts from 0 on resume). In eval mode progress is 1 (the final,
    one-step regime), so eval losses are comparable across the run.
    """

    def __init__(self, *args, num_train: int | None = None, start: float = 0.25, end: float = 1.0,
                 ramp: float = 0.75, reverse_order: bool = True, **kw):
        super().__init__(*args, **kw)
        self.num_train, self.start, self.end, self.ramp, self.reverse_order = num_train, start, end, ramp, reverse_order
        self._seen = 0
        self._rank_of: dict[int, list[int]] = {}

    def step_of(self, indices: Sequence[int], epoch: int) -> int:
        """The optimizer step that drew `indices` in `epoch` (exact when `num_train` is known)."""
        cfg = self.cfg
        if self.num_train:
            from echocxr.training.loop import epoch_order

            per_epoch = max(1, self.num_train // cfg.batch_size)
            if epoch not in self._rank_of:
                order = epoch_order(self.num_train, cfg.seed, epoch)
                rank = [0] * self.num_train
                for pos, i in enumerate(order):
                    rank[i] = pos
                self._rank_of = {epoch: rank}  # one epoch cached: they come in order
            k = min(self._rank_of[epoch][indices[0]] // cfg.batch_size, per_epoch - 1)
            return epoch * per_epoch + k
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        return self._seen // max(1, cfg.batch_size // world)

    def progress(self, model, indices: Sequence[int], epoch: int) -> float:
        if not model.training:
            return 1.0
        step = self.step_of(indices, epoch)
        if not self.num_train:
            self._seen += len(indices)
        return min(1.0, step / max(1, self.cfg.max_steps))

    def __call__(self, model, examples, indices, epoch):
        L = self.cfg.block_length
        ratio = curriculum_ratio(self.progress(model, indices, epoch), self.start, self.end, self.ramp)
        trajs = self.trajectories(examples)
        masks = [commit_order_mask(t.steps.tolist(), L, ratio, example_generator(self.cfg.seed, epoch, i),
                                   self.reverse_order) for t, i in zip(trajs, indices, strict=True)]
        batch = self.batch([e.prompt for e in examples], [t.tokens for t in trajs], masks)
        logits, targets, noised = self.logits(model, batch)
        loss = mean_over_examples(token_ce(logits, targets), noised & (targets >= 0))
        return loss, {"ce": float(loss.detach()), "mask_ratio": ratio}


class T3DObjective(TrajectoryObjective):
    """Trajectory preference (T3D, DPO-style): on fully masked blocks, prefer the teacher's block (chosen) over
    the student's own greedy one-step block (rejected), relative to a frozen copy of the initial student.

    Block log-likelihoods are sums over the block's slots, each block conditioned on the teacher's earlier
    blocks (the RAD layout). Rejected labels are greedy one-step predictions (no grad) of the student: by
    default of the frozen initial student, as T3D's code draws its fake samples (temperature 0) from the
    reference, which keeps each pair fixed over training; `rejected="student"` uses the current student's
    argmax instead (on-policy: a pair disappears as soon as the student writes the teacher's block). Blocks
    where chosen and rejected agree carry no preference and are skipped. The reference is copied at
    construction from `positions.base` (the student before any step, also on resume), stored in bf16 under bf16
    mixed precision; `form="ddo"` gives T3D's DDO objective instead of the DPO pair loss.
    """

    def __init__(self, *args, form: str = "dpo", rejected: str = "reference", ce_weight: float = 0.0,
                 ddo_alpha: float = 1.0, reference: torch.nn.Module | None = None, **kw):
        super().__init__(*args, **kw)
        if form not in ("dpo", "ddo"):
            raise ValueError(f"unknown T3D form {form!r} (dpo | ddo)")
        if rejected not in ("reference", "student"):
            raise ValueError(f"unknown T3D rejected source {rejected!r} (reference | student)")
        self.form, self.rejected, self.ce_weight, self.ddo_alpha = form, rejected, ce_weight, ddo_alpha
        base = reference if reference is not None else getattr(self.positions, "base", None)
        self.reference = self._freeze(base) if base is not None else None

    def _bf16(self) -> bool:
        mp = self.cfg.mixed_precision
        return mp == "bf16" or (mp == "auto" and torch.cuda.is_available())

    def _freeze(self, model: torch.nn.Module) -> torch.nn.Module:
        ref = copy.deepcopy(getattr(model, "module", model))
        ref.requires_grad_(False)
        if self._bf16():
            ref.to(torch.bfloat16)
        return ref.eval()

    def reference_logits(self, model, batch: SequenceBatch) -> torch.Tensor:
        if self.reference is None:  # no base at construction: the first model seen is the initial student
            self.reference = self._freeze(model)
        dev = next(model.parameters()).device
        if next(self.reference.parameters()).device != dev:
            self.reference.to(dev)
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self._bf16()):
            return slot_logits(self.reference, batch, self.is_vision).float()

    def __call__(self, model, examples, indices, epoch):
        L = self.cfg.block_length
        trajs = self.trajectories(examples)
        batch = self.batch([e.prompt for e in examples], [t.tokens for t in trajs],
                           [[True] * len(t.tokens) for t in trajs])
        logits, chosen, _ = self.logits(model, batch)
        ref_logits = self.reference_logits(model, batch).to(logits.device)
        valid = chosen >= 0
        greedy = (ref_logits if self.rejected == "reference" else logits.detach()).argmax(-1)
        rejected = torch.where(valid, greedy, chosen)
        pi_c = block_logprob_sums(logits, chosen, valid, L)
        pi_r = block_logprob_sums(logits, rejected, valid, L)
        ref_c = block_logprob_sums(ref_logits, chosen, valid, L)
        ref_r = block_logprob_sums(ref_logits, rejected, valid, L)
        B, R = chosen.shape
        differs = ((rejected != chosen) & valid).view(B, R // L, L).any(-1)
        if self.form == "dpo":
            pref = dpo_loss(pi_c, pi_r, ref_c, ref_r, self.cfg.dpo_beta, differs)
        else:
            pref = ddo_loss(pi_c, pi_r, ref_c, ref_r, self.cfg.dpo_beta, differs, self.ddo_alpha)
        loss = pref
        metrics = {"pref": float(pref.detach()), "pref_blocks_frac": float(differs.float().mean()),
                   "margin": float(((pi_c - ref_c) - (pi_r - ref_r)).detach()[differs].mean()) if bool(differs.any())
                   else 0.0}
        if self.ce_weight > 0:
            ce = mean_over_examples(token_ce(logits, chosen), valid)
            loss = loss + self.ce_weight * ce
            metrics["ce"] = float(ce.detach())
        return loss, metrics


_CLASSES = {"dparallel": DParallelObjective, "cd4lm": CD4LMObjective, "d3llm": D3LLMObjective, "t3d": T3DObjective}


def make_baseline_objective(stage: str, positions: PromptPositions, ids: TokenIds, is_vision: bool, cfg: TrainConfig,
                            trajectories: Mapping[str, Trajectory], **options):
    """The objective of a baseline stage; `options` go to its constructor (e.g. d3llm's `num_train`)."""
    if stage not in _CLASSES:
        raise ValueError(f"unknown baseline {stage!r} (use one of: {', '.join(BASELINES)})")
    return _CLASSES[stage](positions, ids, is_vision, cfg, trajectories, **options)
