"""The paper's distillation baselines (ECHO-SPEC §4), trained from the same teacher trajectories as DCD.

Each objective has the loop's signature, objective(model, examples, indices, epoch) -> (loss, metrics), and
uses the teacher's committed tokens (`Trajectory.tokens`, the pseudo-labels b^) as its targets:

- dParallel (Chen et al. 2025, "certainty-forcing distillation"; its code): CE on pseudo-labels at the masked
  slots of one random block (each slot masked with p ~ 0.5) and of its complementary mask, plus temperature-
  scaled entropy minimisation on the slots the student already gets right.
- CD4LM (Liang et al. 2026, "discrete-space consistency distillation"; its code): a high-noise view of the
  response for the student and a nested low-noise view for a frozen teacher (the Base); KL from the softened
  teacher prediction to the student's, mixed with CE by lambda, each term clamped to [0, 5].
- d3LLM (Qian et al. 2025, "pseudo-trajectory distillation"; its code): one block masked where the teacher's
  trajectory still had it masked partway through, its complement, and dParallel's entropy term; the mask ratio
  and the training block size grow with training progress.
- T3D (Zhang et al. 2026, trajectory self-distillation; its code): DDO (real: the teacher's trajectory, fake: a
  reference model's greedy prediction) on per-sequence mean log-probs plus a path CE, the reference refreshed
  from the student; the DPO form the ECHO paper describes is the named variant `t3d_form: dpo`.

Where our setting forces a choice their code does not make, the docstring of the piece says so: e.g. losses
are per-example means (so micro-batches add up to the batch exactly) where their code averages tokens over a
micro-batch, and CD4LM's target at a slot its teacher view can see is that token (a RAD model is never trained
to predict at visible slots). The decoding each baseline's paper reports is written into its model's
settings by the stage (`stages.stage_settings`).

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

from echocxr.backbones.settings import DEFAULT_LOOKAHEAD_THRESHOLD, MAX_LOOKAHEAD
from echocxr.diffusion.losses import token_ce
from echocxr.diffusion.noise import example_generator, step_generator
from echocxr.diffusion.sequences import SequenceBatch, pad_to_blocks
from echocxr.training.config import TrainConfig
from echocxr.training.objectives import PromptPositions, TokenIds, TrajectoryObjective, slot_logits
from echocxr.training.trajectories import Trajectory

BASELINES = ("dparallel", "cd4lm", "d3llm", "t3d")


# ----------------------------------------------------------------------------------------------------------
# pure maths over logits
# ----------------------------------------------------------------------------------------------------------

def example_means(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """values, weights (B, N) -> (B,): each example's weighted mean (0 if it has no weight)."""
    w = weights.to(values.dtype)
    denom = w.sum(dim=1)
    per = (values * w).sum(dim=1) / denom.clamp_min(1e-8)
    return torch.where(denom > 0, per, torch.zeros_like(per))


def mean_over_examples(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """values, weights (B, N) -> mean over all B examples of each one's weighted mean (0 if it has no weight).

    Unlike `per_example_mean`, empty rows stay in the denominator, so the mean of equal micro-batches equals
    the full-batch value even when some rows (e.g. a complementary mask's empty copy) score nothing.
    """
    return example_means(values, weights).mean()


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
                     temperature: float, clamp: tuple[float, float] | None = None) -> tuple[torch.Tensor, dict]:
    """CD4LM: lam * T^2 * KL(P_low || softmax(high / T)) + (1 - lam) * CE(high, pseudo-label), on high-mask slots;
    with `clamp`, each example's two terms are clamped to that range first (CD4LM's code: [0, 5]).

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
    kl_e = example_means(kl, scored) * T * T
    ce_e = example_means(token_ce(high_logits, targets), scored)
    if clamp is not None:  # per example (CD4LM's code: per micro-batch of 2), so micro-batches still add up
        kl_e, ce_e = kl_e.clamp(*clamp), ce_e.clamp(*clamp)
    kl_m, ce_m = kl_e.mean(), ce_e.mean()
    loss = lam * kl_m + (1 - lam) * ce_m
    return loss, {"kl": float(kl_m.detach()), "ce": float(ce_m.detach())}


def label_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, R, V), (B, R) -> (B, R): log p(label) at each slot (labels < 0 read as 0; weight them out)."""
    return F.log_softmax(logits.float(), dim=-1).gather(-1, labels.clamp_min(0)[..., None])[..., 0]


def block_logprob_sums(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
                       block_length: int) -> torch.Tensor:
    """(B, R, V), (B, R), (B, R) -> (B, R / L): sum of log p(label) over each block's valid slots."""
    logp = label_logprobs(logits, labels) * valid
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

def nested_sequence_masks(n_tokens: int, gen: torch.Generator) -> tuple[list[bool], list[bool]]:
    """CD4LM's paired masks over the whole response (its collator): student ratio r_s ~ U(0.4, 0.9) (at most 0.5
    under 20 tokens), teacher ratio clip(r_s * U(0.3, 0.7), 0.1, 0.6); at least max(2, ceil(0.1 R)) student
    slots (2 and 1 up to 10 tokens); the teacher's are the first of the same permutation, so nested."""
    R = n_tokens
    u = torch.rand(2, generator=gen).tolist()
    r_s = 0.4 + 0.5 * u[0]
    r_t = max(0.1, min(0.6, r_s * (0.3 + 0.4 * u[1])))
    if R < 20:
        r_s = min(r_s, 0.5)
    if R <= 10:
        n_s, n_t = 2, 1
    else:
        n_s = max(int(R * r_s), max(2, math.ceil(0.1 * R)))
        n_t = min(int(R * r_t), n_s)
    n_s = min(n_s, R)
    n_t = min(n_t, n_s)
    perm = torch.randperm(R, generator=gen).tolist()
    high, low = [False] * R, [False] * R
    for k, j in enumerate(perm[:n_s]):
        high[j] = True
        low[j] = k < n_t
    return high, low


# dParallel's per-token mask probability inside the chosen block: (1 - eps) * 0.5 + eps
DPARALLEL_P = (1 - 1e-3) * 0.5 + 1e-3


def one_block_complementary_masks(n_tokens: int, block_length: int, gen: torch.Generator,
                                  p: float = DPARALLEL_P) -> tuple[list[bool], list[bool]]:
    """dParallel's paired masks (its training code): one block chosen uniformly, each of its slots masked with
    probability p, and the complement within that block; the other blocks are not scored."""
    L = block_length
    n_blocks = max(1, -(-n_tokens // L))
    k = int(torch.randint(n_blocks, (), generator=gen))
    draw = (torch.rand(L, generator=gen) < p).tolist()
    first, second = [False] * n_tokens, [False] * n_tokens
    for j in range(L):
        i = k * L + j
        if i < n_tokens:
            first[i], second[i] = draw[j], not draw[j]
    return first, second


def decode_ranks(steps: Sequence[int], block_length: int) -> list[int]:
    """Each slot's place in the order the teacher committed the response: block by block, within a block by the
    step that committed it, left to right within a step."""
    L = block_length
    order = sorted(range(len(steps)), key=lambda j: (j // L, int(steps[j]), j))
    rank = [0] * len(steps)
    for pos, j in enumerate(order):
        rank[j] = pos
    return rank


def trajectory_block_masks(steps: Sequence[int], teacher_block: int, block_size: int, ratio: float,
                           gen: torch.Generator) -> tuple[list[bool], list[bool]]:
    """d3LLM's paired masks (its training code): one training block k chosen uniformly; the teacher's trajectory
    state after k * b + int((1 - ratio) * b) committed tokens leaves the block's later-committed slots masked
    (at least its last one); the complement within the block is the second copy. Training blocks of size b need
    not align with the teacher's blocks (its block-size curriculum), as in d3LLM's code."""
    R, b = len(steps), block_size
    rank = decode_ranks(steps, teacher_block)
    n_blocks = max(1, -(-R // b))
    k = int(torch.randint(n_blocks, (), generator=gen))
    cols = list(range(k * b, min((k + 1) * b, R)))
    decoded = k * b + int((1 - ratio) * b)
    first, second = [False] * R, [False] * R
    masked = [j for j in cols if rank[j] >= decoded] or [max(cols, key=lambda j: rank[j])]
    for j in cols:
        first[j] = j in masked
        second[j] = not first[j]
    return first, second


def d3llm_ratio(progress: float, gen: torch.Generator, top: float = 0.8) -> float:
    """d3LLM's mask ratio of a step: r ~ U[base, top] with base rising linearly from 0 to `top` over training."""
    base = top * min(max(progress, 0.0), 1.0)
    return base + (top - base) * float(torch.rand((), generator=gen))


def d3llm_block_size(progress: float, block_length: int) -> int:
    """d3LLM's block-size curriculum, scaled to L: its six phases [L/2, L/2, 3L/4, 3L/4, L, L] (LLaDA: 16..32),
    each moving linearly toward the next phase's size and truncated to an integer."""
    L = block_length
    sizes = [L / 2, L / 2, 3 * L / 4, 3 * L / 4, L, L]
    x = min(max(progress, 0.0), 1.0) * len(sizes)
    i = min(int(x), len(sizes) - 1)
    nxt = sizes[min(i + 1, len(sizes) - 1)]
    return max(1, int(sizes[i] + (nxt - sizes[i]) * (x - i)))


T3D_RATIOS = (1.0, 0.75, 0.5, 0.25)  # T3D's mask ratios, drawn with weight r^8


def t3d_masks(steps: Sequence[int], block_length: int, gen: torch.Generator,
              random_ratio: float = 0.1) -> tuple[list[bool], list[bool]]:
    """T3D's masks (its data preparation): one ratio r per example from T3D_RATIOS (weights r^8); in every block
    the first floor(L * r) slots in the teacher's commit order are masked; `random_ratio` of the masked slots (at
    least one) then hold a random token instead of the mask. Returns (masked, random-token slots)."""
    L = block_length
    w = torch.tensor([r ** 8 for r in T3D_RATIOS])
    r = T3D_RATIOS[int(torch.multinomial(w / w.sum(), 1, generator=gen))]
    rank = decode_ranks(steps, L)
    masked = [False] * len(steps)
    for b0 in range(0, len(steps), L):
        cols = sorted(range(b0, min(b0 + L, len(steps))), key=lambda j: rank[j])
        for j in cols[:int(len(cols) * r)]:
            masked[j] = True
    picked = [j for j, m in enumerate(masked) if m]
    n_random = max(1, int(len(picked) * random_ratio)) if picked and random_ratio > 0 else 0
    chosen = set(torch.tensor(picked)[torch.randperm(len(picked), generator=gen)[:n_random]].tolist()) if n_random else set()
    return masked, [j in chosen for j in range(len(steps))]


def path_levels(steps: Sequence[int], block_length: int, per_level: int) -> list[list[bool]]:
    """T3D's path loss levels: level s keeps, in every block, the first min((s + 1) * k, L) slots in the teacher's
    commit order (k = `per_level`), for s = 0 .. ceil(L / k) - 1."""
    L, k = block_length, max(1, per_level)
    rank = decode_ranks(steps, L)
    levels = []
    for s in range(-(-L // k)):
        keep = [False] * len(steps)
        for b0 in range(0, len(steps), L):
            cols = sorted(range(b0, min(b0 + L, len(steps))), key=lambda j: rank[j])
            for j in cols[:min((s + 1) * k, L)]:
                keep[j] = True
        levels.append(keep)
    return levels


# ----------------------------------------------------------------------------------------------------------
# objectives
# ----------------------------------------------------------------------------------------------------------

class _StepAware:
    """The optimizer step of a call, for objectives whose schedule depends on it (d3LLM's curricula, T3D's
    reference refresh). With `num_train` (the number of training examples) the step is recovered exactly from
    (indices, epoch) by inverting the loop's `global_batch_indices`, so it is the same on every rank,
    micro-batch and resumed run. Without it the objective counts the training examples it has seen (exact for
    a single uninterrupted run, restarts from 0 on resume)."""

    cfg: TrainConfig
    num_train: int | None

    def _init_steps(self, num_train: int | None) -> None:
        self.num_train = num_train
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

    def train_step(self, model, indices: Sequence[int], epoch: int) -> int | None:
        """The step of a training call (None in eval mode); counts examples when `num_train` is unknown."""
        if not model.training:
            return None
        step = self.step_of(indices, epoch)
        if not self.num_train:
            self._seen += len(indices)
        return step


class _FrozenModel:
    """A frozen copy of the student (its initial weights unless refreshed), run without grad in the student's
    precision policy: CD4LM's teacher view, T3D's reference."""

    cfg: TrainConfig
    is_vision: bool

    def _bf16(self) -> bool:
        mp = self.cfg.mixed_precision
        return mp == "bf16" or (mp == "auto" and torch.cuda.is_available())

    def freeze(self, model: torch.nn.Module) -> torch.nn.Module:
        ref = copy.deepcopy(getattr(model, "module", model))
        ref.requires_grad_(False)
        if self._bf16():
            ref.to(torch.bfloat16)
        return ref.eval()

    def frozen_logits(self, frozen: torch.nn.Module, model, batch: SequenceBatch) -> torch.Tensor:
        dev = next(model.parameters()).device
        if next(frozen.parameters()).device != dev:
            frozen.to(dev)
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self._bf16()):
            return slot_logits(frozen, batch, self.is_vision).float()


class DParallelObjective(TrajectoryObjective):
    """Certainty-forcing distillation (dParallel): pseudo-label CE + entropy minimisation on correct slots.

    As in dParallel's training code, each example has one block masked at random (each slot with probability
    ~0.5) and a second copy with the complementary mask of that block (one forward of 2B rows); the two copies'
    losses add, so every slot of the block is supervised once per step.
    """

    def __init__(self, *args, complementary: bool = True, **kw):
        super().__init__(*args, **kw)
        self.complementary = complementary

    def __call__(self, model, examples, indices, epoch):
        L = self.cfg.block_length
        trajs = self.trajectories(examples)
        first, second = [], []
        for t, i in zip(trajs, indices, strict=True):
            m, c = one_block_complementary_masks(len(t.tokens), L, example_generator(self.cfg.seed, epoch, i))
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


# CD4LM's code clamps each of its two loss terms to this range before mixing them
CD4LM_CLAMP = (0.0, 5.0)


class CD4LMObjective(_FrozenModel, TrajectoryObjective):
    """Discrete-space consistency distillation (CD4LM): the student under heavy masking matches a frozen
    teacher's prediction under a nested lighter masking of the same response, plus pseudo-label CE.

    As in CD4LM's code the teacher is a frozen copy of the model distillation starts from (here the Base, which
    also wrote the trajectories), and the masks are drawn over the whole response (`nested_sequence_masks`).
    Each term is clamped to [0, 5] before the lambda mix, as its code does.
    """

    clamp: tuple[float, float] | None = CD4LM_CLAMP  # above 5 a term passes no gradient: a Base starts far below

    def __init__(self, *args, teacher: torch.nn.Module | None = None, **kw):
        super().__init__(*args, **kw)
        base = teacher if teacher is not None else getattr(self.positions, "base", None)
        self.teacher = self.freeze(base) if base is not None else None

    def __call__(self, model, examples, indices, epoch):
        trajs = self.trajectories(examples)
        high, low = [], []
        for t, i in zip(trajs, indices, strict=True):
            h, lo = nested_sequence_masks(len(t.tokens), example_generator(self.cfg.seed, epoch, i))
            high.append(h)
            low.append(lo)
        prompts, clean = [e.prompt for e in examples], [t.tokens for t in trajs]
        if self.teacher is None:  # no base at construction: the first model seen is the initial student
            self.teacher = self.freeze(model)
        low_batch = self.batch(prompts, clean, low)
        low_logits = self.frozen_logits(self.teacher, model, low_batch)
        high_logits, targets, high_mask = self.logits(model, self.batch(prompts, clean, high))
        return consistency_loss(high_logits, low_logits.to(high_logits.device), targets, high_mask,
                                low_batch.noised.to(high_logits.device), self.cfg.cd4lm_lambda,
                                self.cfg.cd4lm_temperature, clamp=self.clamp)


class D3LLMObjective(_StepAware, TrajectoryObjective):
    """Pseudo-trajectory distillation (d3LLM), as its training code combines it: one block per example masked
    where the teacher's trajectory still had it masked partway through (`trajectory_block_masks`), its
    complementary copy, and (CE + CE_complement + w * H) / 4 with dParallel's entropy term H (first copy, correct
    slots, temperature T). The mask ratio of a step is r ~ U[0.8 p, 0.8] at training progress p, and the
    training block size follows `d3llm_block_size` (L/2 up to L).

    Progress = optimizer step / cfg.max_steps (see `_StepAware`); in eval mode it is 1 (the final block size
    and ratio range), so eval losses are comparable across the run.
    """

    def __init__(self, *args, num_train: int | None = None, **kw):
        super().__init__(*args, **kw)
        self._init_steps(num_train)

    def _progress_at(self, step: int | None) -> float:
        return 1.0 if step is None else min(1.0, step / max(1, self.cfg.max_steps))

    def progress(self, model, indices: Sequence[int], epoch: int) -> float:
        return self._progress_at(self.train_step(model, indices, epoch))

    def __call__(self, model, examples, indices, epoch):
        L = self.cfg.block_length
        step = self.train_step(model, indices, epoch)
        p = self._progress_at(step)
        ratio = d3llm_ratio(p, step_generator(self.cfg.seed, -1 if step is None else step))
        size = d3llm_block_size(p, L)
        trajs = self.trajectories(examples)
        first, second = [], []
        for t, i in zip(trajs, indices, strict=True):
            m, c = trajectory_block_masks(t.steps.tolist(), L, size, ratio, example_generator(self.cfg.seed, epoch, i))
            first.append(m)
            second.append(c)
        clean = [pad_to_blocks(list(t.tokens), size, self.ids.pad) for t in trajs] * 2
        masks = [pad_to_blocks(m, size, False) for m in first + second]
        batch = self.batch([e.prompt for e in examples] * 2, clean, masks, block_length=size)
        logits, targets, noised = self.logits(model, batch)
        B = len(examples)
        scored = noised & (targets >= 0)
        ce = mean_over_examples(token_ce(logits[:B], targets[:B]), scored[:B])
        ce_rev = mean_over_examples(token_ce(logits[B:], targets[B:]), scored[B:])
        correct = scored[:B] & (logits[:B].detach().argmax(-1) == targets[:B])
        ent = mean_over_examples(tempered_entropy(logits[:B], self.cfg.entropy_temperature), correct)
        loss = (ce + ce_rev + self.cfg.entropy_weight * ent) / 4
        return loss, {"ce": float(ce.detach()), "ce_rev": float(ce_rev.detach()), "entropy": float(ent.detach()),
                      "mask_ratio": ratio, "block_size": size}


class T3DObjective(_StepAware, _FrozenModel, TrajectoryObjective):
    """Trajectory self-distillation (T3D).

    form "ddo" (T3D's code, the default): each example is masked once for the whole run (`t3d_masks`, drawn
    with epoch 0); the real sample is the teacher's trajectory, the fake one the reference model's argmax on the
    same masked input; each is scored by its mean log-probability over the masked slots, and DDO compares the
    student with the reference: -log s(beta d_real) - alpha log(1 - s(beta d_fake)). The reference is a frozen
    copy of the student, refreshed from it every `t3d_refresh_every` optimizer steps (exact on resume when
    checkpoints fall on refresh steps), and a path loss adds, with weight `t3d_path_weight`, the mean over
    `path_levels` (k = L/2 slots per level) of the CE to the teacher's tokens on each level's slots.

    form "dpo" (the ECHO paper's description): on fully masked blocks, prefer the teacher's block (chosen) over
    the frozen initial student's greedy one-step block (rejected), by DPO on per-block sums of log-probs;
    blocks where the two agree carry no preference and are skipped.
    """

    def __init__(self, *args, form: str | None = None, num_train: int | None = None,
                 reference: torch.nn.Module | None = None, **kw):
        super().__init__(*args, **kw)
        self.form = form or self.cfg.t3d_form
        if self.form not in ("dpo", "ddo"):
            raise ValueError(f"unknown T3D form {self.form!r} (ddo | dpo)")
        self._init_steps(num_train)
        base = reference if reference is not None else getattr(self.positions, "base", None)
        self.reference = self.freeze(base) if base is not None else None
        self._round: int | None = None  # the refresh round the reference holds (None: the initial copy)

    def _refresh(self, model, step: int | None) -> None:
        every = self.cfg.t3d_refresh_every
        if self.form != "ddo" or step is None or every <= 0:
            return
        rnd = step // every
        if self._round is None and rnd == 0:
            self._round = 0  # the initial copy is round 0's reference
        if rnd != self._round:
            src = getattr(model, "module", model).state_dict()
            self.reference.load_state_dict({k: v.detach().to(self.reference.state_dict()[k].dtype)
                                            for k, v in src.items()})
            self._round = rnd

    def __call__(self, model, examples, indices, epoch):
        if self.reference is None:  # no base at construction: the first model seen is the initial student
            self.reference = self.freeze(model)
        step = self.train_step(model, indices, epoch)
        self._refresh(model, step)
        return (self._ddo if self.form == "ddo" else self._dpo)(model, examples, indices)

    def _ddo(self, model, examples, indices):
        L, cfg = self.cfg.block_length, self.cfg
        trajs = self.trajectories(examples)
        masked, rand = [], []
        for t, i in zip(trajs, indices, strict=True):
            m, r = t3d_masks(t.steps.tolist(), L, example_generator(cfg.seed, 0, i), cfg.t3d_random_ratio)
            masked.append(m)
            rand.append(r)
        batch = self.batch([e.prompt for e in examples], [t.tokens for t in trajs], masked)
        V = model.get_output_embeddings().weight.shape[0]
        for b, (r, i) in enumerate(zip(rand, indices, strict=True)):
            slots = [j for j, x in enumerate(r) if x]
            if slots:  # a random token where the mask was: still a noised, scored slot
                g = example_generator(cfg.seed, 1, i)
                batch.input_ids[b, batch.target_cols[b, slots]] = torch.randint(V, (len(slots),), generator=g)
        logits, real, _ = self.logits(model, batch)
        R = real.shape[1]
        noised = torch.tensor([m + [False] * (R - len(m)) for m in masked], device=logits.device) & (real >= 0)
        ref_logits = self.frozen_logits(self.reference, model, batch).to(logits.device)
        fake = torch.where(noised, ref_logits.argmax(-1), real)
        def seq_mean(lg: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # (B, 1): over the masked slots
            return example_means(label_logprobs(lg, labels), noised)[:, None]

        has = noised.any(1).float()[:, None]
        ddo = ddo_loss(seq_mean(logits, real), seq_mean(logits, fake), seq_mean(ref_logits, real),
                       seq_mean(ref_logits, fake), cfg.dpo_beta, has, cfg.ddo_alpha)
        valid = real >= 0
        ce = token_ce(logits, real)
        levels = [path_levels(t.steps.tolist(), L, max(1, L // 2)) for t in trajs]
        n_levels = len(levels[0])
        path = sum(mean_over_examples(ce, torch.tensor([lv[s] + [False] * (R - len(lv[s])) for lv in levels],
                                                       device=logits.device) & valid)
                   for s in range(n_levels)) / n_levels
        loss = ddo + cfg.t3d_path_weight * path
        return loss, {"ddo": float(ddo.detach()), "path": float(path.detach()),
                      "fake_differs": float(((fake != real) & noised).any(1).float().mean()),
                      "reference_round": -1 if self._round is None else self._round}

    def _dpo(self, model, examples, indices):
        L = self.cfg.block_length
        trajs = self.trajectories(examples)
        batch = self.batch([e.prompt for e in examples], [t.tokens for t in trajs],
                           [[True] * len(t.tokens) for t in trajs])
        logits, chosen, _ = self.logits(model, batch)
        ref_logits = self.frozen_logits(self.reference, model, batch).to(logits.device)
        valid = chosen >= 0
        rejected = torch.where(valid, ref_logits.argmax(-1), chosen)
        pi_c = block_logprob_sums(logits, chosen, valid, L)
        pi_r = block_logprob_sums(logits, rejected, valid, L)
        ref_c = block_logprob_sums(ref_logits, chosen, valid, L)
        ref_r = block_logprob_sums(ref_logits, rejected, valid, L)
        B, R = chosen.shape
        differs = ((rejected != chosen) & valid).view(B, R // L, L).any(-1)
        pref = dpo_loss(pi_c, pi_r, ref_c, ref_r, self.cfg.dpo_beta, differs)
        return pref, {"pref": float(pref.detach()), "pref_blocks_frac": float(differs.float().mean()),
                      "margin": float(((pi_c - ref_c) - (pi_r - ref_r)).detach()[differs].mean())
                      if bool(differs.any()) else 0.0}


def baseline_decoding(stage: str, block_length: int) -> dict:
    """steps / remasking / threshold of a baseline as its paper decodes it (the ECHO paper's TPF at L=8 in
    brackets): dParallel and d3LLM by entropy, bound 0.5 (their LLaDA settings) [4.42, 3.84]; d3LLM also with
    its multi-block look-ahead (its `generate_multi_block_kv_cache`: the next block joins once the last open one
    is `block_add_threshold` = 0.1 committed, no cap on open blocks: MAX_LOOKAHEAD here); CD4LM by confidence,
    threshold 0.95 (its code) [3.61]; T3D with a static split of L/2 steps, two tokens per forward [2.00]."""
    L = block_length
    if stage == "dparallel":
        return {"steps": L, "remasking": "low_entropy_dynamic", "threshold": 0.5}
    if stage == "d3llm":
        return {"steps": L, "remasking": "low_entropy_dynamic", "threshold": 0.5, "lookahead": MAX_LOOKAHEAD,
                "lookahead_threshold": DEFAULT_LOOKAHEAD_THRESHOLD}
    if stage == "cd4lm":
        return {"steps": L, "remasking": "low_confidence_dynamic", "threshold": 0.95}
    if stage == "t3d":
        return {"steps": max(1, L // 2), "remasking": "low_confidence_static", "threshold": 0.85}
    raise ValueError(f"unknown baseline {stage!r} (use one of: {', '.join(BASELINES)})")


_CLASSES = {"dparallel": DParallelObjective, "cd4lm": CD4LMObjective, "d3llm": D3LLMObjective, "t3d": T3DObjective}


def make_baseline_objective(stage: str, positions: PromptPositions, ids: TokenIds, is_vision: bool, cfg: TrainConfig,
                            trajectories: Mapping[str, Trajectory], **options):
    """The objective of a baseline stage; `options` go to its constructor (e.g. d3llm's `num_train`)."""
    if stage not in _CLASSES:
        raise ValueError(f"unknown baseline {stage!r} (use one of: {', '.join(BASELINES)})")
    return _CLASSES[stage](positions, ids, is_vision, cfg, trajectories, **options)
