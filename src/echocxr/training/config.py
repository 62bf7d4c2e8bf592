"""Training configs as dataclasses; paper defaults; named recipes; YAML override files."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from echocxr.backbones.settings import (
    DEFAULT_TIE_BREAK,
    DEFAULT_TIE_MARGIN,
    REMASKING_STRATEGIES,
    TIE_BREAKS,
    check_tie_margin,
)
from echocxr.errors import UserError

# the stages that distil a Base on its own trajectories (DCD and the baselines)
DISTILLATION_STAGES = ("dcd", "dparallel", "cd4lm", "d3llm", "t3d")
STAGES = ("vision", "ar", "rad", *DISTILLATION_STAGES)


@dataclass
class TrainConfig:
    # optimisation
    lr: float = 1e-5
    weight_decay: float = 0.0
    batch_size: int = 8  # global examples per optimizer step
    micro_batch_size: int = 8  # examples per forward per process (gradient accumulation fills the rest)
    max_steps: int = 1000
    warmup_steps: int = 50
    schedule: str = "cosine"  # cosine | linear | constant
    clip: float = 1.0
    mixed_precision: str = "auto"  # auto (bf16 on GPU) | no | bf16
    seed: int = 0
    log_every: int = 10
    eval_every: int = 200
    save_every: int = 200
    keep_checkpoints: int = 2  # checkpoints kept in the run folder, newest first (0 = keep every one)
    eval_examples: int = 64
    fsdp: bool = False
    # data
    max_response_tokens: int = 512
    max_examples: int = 0  # per language: the first N training studies only (0 = all); DCD's teacher decodes each
    freeze_vision: bool = True  # paper: vision encoder and projector frozen after AR
    label_weight: float = 0.0  # AR, DCD: weight of the finding-label BCE on the LM's hidden states (0 = off)
    # diffusion
    block_length: int = 4
    layout: str = "rad"  # rad | full (prior work's whole-sequence duplication)
    inv_t_weight: bool = False  # MDLM 1/t weighting
    # DCD (and the baselines that use trajectories)
    tau: float = 0.9  # teacher commit threshold
    # the teacher's commit order within a block: low_confidence_dynamic (the paper: the confident positions
    # first) or sequential (left to right, one per round; the phantom's paraphrases need it, STUDY.md §3c)
    trajectory_remasking: str = "low_confidence_dynamic"
    # the teacher's greedy tie-break (sampling.sample_tokens): 0 is the plain argmax (the paper); r > 0 picks,
    # of the tokens at least r times as likely as the top one, the lowest id, so each statement's phrasing is
    # the same in every context and a one-step student can predict it (STUDY.md §3d)
    trajectory_tie_ratio: float = 0.0
    # per language, a ratio that replaces trajectory_tie_ratio for that language's examples (e.g. {"en": 0.3}):
    # the two languages' trajectories are separate examples, and their best ratios differ (STUDY.md §3f)
    trajectory_tie_ratio_by_language: dict = field(default_factory=dict)
    # which near-top token a tie goes to (DecodeConfig.tie_break): lowest_id, or one_step: the one the block's
    # all-masked first forward ranks highest, so the target is what a one-step student already writes wherever
    # the teacher allows it (STUDY.md §3f)
    trajectory_tie_break: str = DEFAULT_TIE_BREAK
    # per language, a tie-break that replaces trajectory_tie_break there (e.g. {"en": "image"})
    trajectory_tie_break_by_language: dict = field(default_factory=dict)
    # the image tie-break's bound in nats (DecodeConfig.tie_margin)
    trajectory_tie_margin: float = DEFAULT_TIE_MARGIN
    # soft: the teacher's commit-time distribution (the paper); hard: a one-hot of the token it committed
    # (cross-entropy on the trajectory), which keeps a near-tie choice of phrasing one choice (STUDY.md §3c)
    dcd_target: str = "soft"
    trajectory_topk: int = 0  # 0: full distribution when vocab <= 4096, else 64
    # studies the teacher decodes together: on CPU 128 collected the built-in model's trajectories 1.6x as fast
    # as 16, with the same tokens (benchmarks/results/trajectory_batch.json); a cache does not depend on it
    trajectory_batch_size: int = 128
    sw: bool = True  # step-wise weighting
    eos_ce: float = 1.0  # weight of the extra <eos> CE (0 = off)
    rkl: bool = False  # reverse-KL ablation
    # DCD/baselines: decoder layers appended to the student as exact identities before it trains (the teacher
    # keeps its depth): more attention rounds for a block's positions to agree within one forward
    grow_layers: int = 0
    # baselines
    entropy_weight: float = 2.0  # dParallel
    entropy_temperature: float = 0.5  # dParallel
    cd4lm_lambda: float = 0.7
    cd4lm_temperature: float = 2.0
    dpo_beta: float = 0.1  # T3D: beta of its DDO (and of the DPO variant)
    # T3D: ddo (its code: DDO real/fake on per-sequence mean log-probs, a reference refreshed from the student, a
    # path CE) | dpo (the ECHO paper's description: DPO on per-block sums against the frozen initial student)
    t3d_form: str = "ddo"
    t3d_path_weight: float = 0.2  # T3D's released config (its code falls back to 0.05 without one)
    ddo_alpha: float = 0.5  # weight of DDO's fake term
    t3d_refresh_every: int = 10  # optimizer steps between copies of the student into the reference (0: never)
    t3d_random_ratio: float = 0.1  # share of masked slots given a random token instead of the mask
    # tiny model built when a vision/AR run has no --from (recipes)
    tiny_model: dict = field(default_factory=dict)
    image_size: int = 0  # square side the tiny model's images are resized to (0: 112); phantoms render at it
    phantoms: dict = field(default_factory=dict)  # phantom set made when --data is absent

    def validate(self) -> TrainConfig:
        if self.batch_size % self.micro_batch_size:
            raise UserError(f"batch_size {self.batch_size} must be a multiple of micro_batch_size {self.micro_batch_size}")
        if self.trajectory_remasking not in REMASKING_STRATEGIES:
            raise UserError(f"trajectory_remasking {self.trajectory_remasking!r} is not one of "
                            f"{', '.join(REMASKING_STRATEGIES)}")
        if self.keep_checkpoints < 0:
            raise UserError(f"keep_checkpoints must be 0 (keep all) or a positive count, got {self.keep_checkpoints}")
        if self.save_every < 0:
            raise UserError(f"save_every must be 0 (only the final checkpoint) or a positive interval, got {self.save_every}")
        if self.max_examples < 0:
            raise UserError(f"max_examples must be 0 (all) or a positive count, got {self.max_examples}")
        if self.t3d_form not in ("ddo", "dpo"):
            raise UserError(f"t3d_form must be ddo or dpo, got {self.t3d_form!r}")
        if self.t3d_refresh_every < 0 or not 0.0 <= self.t3d_random_ratio <= 1.0:
            raise UserError("t3d_refresh_every must be >= 0 and t3d_random_ratio in [0, 1]")
        if self.trajectory_batch_size < 1:
            raise UserError(f"trajectory_batch_size must be >= 1, got {self.trajectory_batch_size}")
        if self.grow_layers < 0:
            raise UserError(f"grow_layers must be 0 or a positive count, got {self.grow_layers}")
        if not 0.0 <= self.trajectory_tie_ratio < 1.0:
            raise UserError(f"trajectory_tie_ratio must be in [0, 1), got {self.trajectory_tie_ratio}")
        by_lang = self.trajectory_tie_ratio_by_language
        if not isinstance(by_lang, dict) or not all(
                isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) and 0.0 <= v < 1.0
                for k, v in by_lang.items()):
            raise UserError(f"trajectory_tie_ratio_by_language must map languages to ratios in [0, 1), got {by_lang!r}")
        if self.trajectory_tie_break not in TIE_BREAKS:
            raise UserError(f"trajectory_tie_break must be one of {', '.join(TIE_BREAKS)}, "
                            f"got {self.trajectory_tie_break!r}")
        breaks = self.trajectory_tie_break_by_language
        if not isinstance(breaks, dict) or not all(isinstance(k, str) and v in TIE_BREAKS for k, v in breaks.items()):
            raise UserError(f"trajectory_tie_break_by_language must map languages to one of {', '.join(TIE_BREAKS)}, "
                            f"got {breaks!r}")
        check_tie_margin(self.trajectory_tie_margin, "trajectory_tie_margin")
        if self.dcd_target not in ("soft", "hard"):
            raise UserError(f"dcd_target must be soft or hard, got {self.dcd_target!r}")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise UserError(f"unknown schedule {self.schedule!r}")
        if self.layout not in ("rad", "full"):
            raise UserError(f"unknown layout {self.layout!r} (rad | full)")
        if self.block_length < 1:
            raise UserError("block_length must be >= 1")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


# Per-stage overrides of the defaults above for the named recipes.
RECIPES: dict[str, dict[str, dict]] = {
    # CPU, a few minutes end to end: tiny model, 256 phantoms
    "phantom-tiny": {
        "*": dict(batch_size=16, micro_batch_size=16, lr=2e-3, warmup_steps=10, log_every=10, eval_every=100,
                  save_every=100, eval_examples=16, mixed_precision="no",
                  tiny_model=dict(hidden=96, layers=3, heads=4, vision_hidden=32, vision_depth=1),
                  phantoms=dict(n=320, seed=0, image_size=112)),
        "ar": dict(max_steps=300, freeze_vision=False),
        "rad": dict(max_steps=300, lr=1e-3),
        "dcd": dict(max_steps=150, lr=5e-4),
    },
    # the built-in model (scripts/train_demo_model.sh): English, block 4, CPU, about 30 minutes
    "phantom-demo": {
        "*": dict(batch_size=16, micro_batch_size=16, lr=2e-3, warmup_steps=30, log_every=20, eval_every=250,
                  save_every=250, eval_examples=32, mixed_precision="no", block_length=4,
                  tiny_model=dict(hidden=128, layers=4, heads=4, vision_hidden=64, vision_depth=2, vocab_size=1024),
                  phantoms=dict(n=2400, seed=0, image_size=128)),
        "ar": dict(max_steps=1500, freeze_vision=False),
        "rad": dict(max_steps=1200, lr=1e-3),
        "dcd": dict(max_steps=600, lr=5e-4),
    },
    # the built-in model (scripts/train_builtin_model.sh): CPU, bilingual, block length 8. The vision stage
    # teaches the tower the finding labels first (benchmarks/results/builtin_model/STUDY.md); 112 px images
    # (16 vision tokens) rendered at 224 px; 9,600 studies so the tower does not overfit, 240 test per language
    "phantom-builtin": {
        "*": dict(batch_size=16, micro_batch_size=16, lr=2e-3, warmup_steps=50, log_every=20, eval_every=500,
                  save_every=250, eval_examples=32, mixed_precision="no", block_length=8, image_size=112,
                  tiny_model=dict(hidden=128, layers=4, heads=4, vision_hidden=96, vision_depth=2, vocab_size=1536),
                  phantoms=dict(n=9600, seed=0, image_size=224, splits=(0.95, 0.025, 0.025))),
        # 3,400 steps lift the label F1 macro 63.8 -> 70.7 and AR's findings, but not the English one-step
        # student (STUDY.md §7: VISION_STEPS=3400 bash scripts/train_builtin_model.sh), so 1,700 stays
        "vision": dict(max_steps=1700, batch_size=32, micro_batch_size=32, warmup_steps=100),
        "ar": dict(max_steps=3000, freeze_vision=True, label_weight=1.0),
        "rad": dict(max_steps=1000, lr=1e-3),
        # DCD on the teacher's left-to-right trajectories with hard targets: with the paper's confidence order
        # and soft targets the English one-step student mixed the phrasings of a statement (STUDY.md §3c); the
        # tie ratio makes the teacher phrase each statement the same way in every context, and every training
        # study is distilled: on 4,000 per language the student overfitted (STUDY.md §3d); ratio 0.5 rather than
        # 0.7 leaves fewer phrasing choices to chance and made the English student valid more often (§3e);
        # English at 0.3, whose finding statements were still phrased inconsistently at 0.5 (§3f); Chinese at 0.3
        # with the image tie-break, which keeps the finding-bearing token when it outscores a normal phrasing
        # by the image's evidence (§5: Chinese one-step report validity 82.5 -> 89.6)
        "dcd": dict(max_steps=3000, lr=5e-4, max_examples=0, trajectory_remasking="sequential",
                    dcd_target="hard", trajectory_tie_ratio=0.3, trajectory_tie_break_by_language={"zh": "image"}),
    },
    # one GPU, each stage within 20 minutes on an H100
    "phantom-small": {
        "*": dict(batch_size=32, micro_batch_size=32, lr=5e-4, warmup_steps=100, eval_every=500, save_every=500,
                  tiny_model=dict(hidden=512, layers=8, heads=8, vision_hidden=256, vision_depth=4),
                  phantoms=dict(n=20000, seed=0, image_size=224)),
        "ar": dict(max_steps=6000, freeze_vision=False),
        "rad": dict(max_steps=4000, lr=2e-4),
        "dcd": dict(max_steps=3000, lr=1e-4),
    },
    # the paper's 7B setting (Qwen2.5-VL / Lingshu-7B), for multi-GPU runs
    "paper-7b": {
        "*": dict(batch_size=64, micro_batch_size=1, lr=1e-5, warmup_steps=100, mixed_precision="bf16"),
        "ar": dict(max_steps=10000, freeze_vision=True),
        "rad": dict(max_steps=3000),
        "dcd": dict(max_steps=500, tau=0.9, sw=True, eos_ce=1.0),
    },
}


def load_config(stage: str, name_or_file: str | None, **overrides) -> TrainConfig:
    if stage not in STAGES:
        raise UserError(f"unknown stage {stage!r} (use one of: {', '.join(STAGES)})")
    values: dict = {}
    if name_or_file:
        if name_or_file in RECIPES:
            recipe = copy.deepcopy(RECIPES[name_or_file])  # a run never edits the shared recipe's dicts
            values.update(recipe.get("*", {}))
            values.update(recipe.get(stage, recipe.get("dcd", {}) if stage in DISTILLATION_STAGES else {}))
        elif Path(name_or_file).is_file():
            values.update(_read_yaml(Path(name_or_file), stage))
        else:
            raise UserError(f"unknown config {name_or_file!r}: not a recipe ({', '.join(RECIPES)}) nor a file")
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(TrainConfig)}
    bad = sorted(set(values) - known)
    if bad:
        raise UserError(f"unknown config keys: {', '.join(bad)}")
    return replace(TrainConfig(), **values).validate()


def _read_yaml(path: Path, stage: str) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"config {path} must be a mapping")
    # either flat keys, or {"*": {...}, "<stage>": {...}}
    if any(k == "*" or k in STAGES for k in data):
        out = dict(data.get("*", {}) or {})
        out.update(data.get(stage, {}) or {})
        return out
    return data
