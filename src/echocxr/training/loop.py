"""The training loop shared by every stage: accelerate (CPU, one GPU, DDP), FSDP (training/sharding.py),
accumulation, warmup + schedule, clipping, periodic eval, atomic checkpoints with exact resume, a metrics jsonl, NaN guard.

Data order and noise are functions of (seed, epoch, example index), never of the process: N ranks, or a
resumed run, see exactly what one uninterrupted process would.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from echocxr.errors import UserError
from echocxr.training.checkpoint import (
    STATE_FILE,
    checkpoint_dir,
    export_model_dir,
    latest_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from echocxr.training.config import TrainConfig
from echocxr.training.sharding import (
    full_model_state,
    full_norm,
    load_optimizer_state,
    optimizer_state,
    set_gradient_sync,
    shard_model,
)

# objective(model, examples, indices, epoch) -> (loss, metrics)
Objective = Callable[[torch.nn.Module, list, list[int], int], tuple[torch.Tensor, dict]]


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        frac = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
        frac = min(max(frac, 0.0), 1.0)
        return 1.0 - frac if cfg.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * frac))
    return f


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch)).tolist()


def global_batch_indices(n: int, cfg: TrainConfig, step: int) -> tuple[list[int], int]:
    """Example indices of optimizer step `step` (epochs wrap; the tail that fits no batch is dropped)."""
    per_epoch = n // cfg.batch_size
    if per_epoch == 0:
        raise UserError(f"only {n} training examples: fewer than one batch of {cfg.batch_size}")
    epoch, k = divmod(step, per_epoch)
    order = epoch_order(n, cfg.seed, epoch)
    return order[k * cfg.batch_size:(k + 1) * cfg.batch_size], epoch


def wants_fsdp(cfg: TrainConfig) -> bool:
    """FSDP from the config (`fsdp: true`, `--fsdp`) or from `accelerate launch --use_fsdp`."""
    import os

    return cfg.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")


def make_accelerator(cfg: TrainConfig):
    import os

    from accelerate import Accelerator

    # FSDP is ours (training/sharding.py): accelerate must not wrap the model a second time
    os.environ.pop("ACCELERATE_USE_FSDP", None)
    mp = cfg.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() else "no"
    return Accelerator(mixed_precision=mp, cpu=not torch.cuda.is_available())


def run_training(model: torch.nn.Module, objective: Objective, train: list, val: list, cfg: TrainConfig,
                 out_dir: Path, tokenizer, image_processor, settings, resume: bool = False,
                 stage: str = "", progress: bool = True, aux: torch.nn.Module | None = None) -> dict:
    """`aux`: a training-only module the objective uses (e.g. the vision stage's label head). It is optimised
    beside the model with the same schedule, saved in the trainer state (never in the model directory) and
    restored on resume."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    fsdp = wants_fsdp(cfg)
    acc = make_accelerator(cfg)
    world, rank = acc.num_processes, acc.process_index
    if cfg.batch_size % world:
        raise UserError(f"batch_size {cfg.batch_size} does not split over {world} processes")
    per_rank = cfg.batch_size // world
    micro = min(cfg.micro_batch_size, per_rank)
    if per_rank % micro:
        raise UserError(f"per-process batch {per_rank} is not a multiple of micro_batch_size {micro}")
    accum = per_rank // micro
    if fsdp and world == 1:
        warnings.warn("FSDP with one process: nothing to shard, training unsharded", stacklevel=2)
    sharded = fsdp and world > 1

    start_step, state = 0, None
    if resume:
        ckpt = latest_checkpoint(out_dir)
        if ckpt is not None:
            # from_pretrained applies transformers' key conversions (saved names differ from module names)
            saved = type(model).from_pretrained(ckpt, dtype=next(model.parameters()).dtype)
            model.load_state_dict(saved.state_dict(), strict=True)
            del saved
            state = torch.load(ckpt / STATE_FILE, weights_only=False)
            start_step = int(state["step"])
            if acc.is_main_process:
                print(f"resuming from {ckpt.name} (step {start_step})", flush=True)
    if sharded:
        model = shard_model(model, acc.device, world, bf16=acc.mixed_precision == "bf16")
    else:
        model = acc.prepare(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # the scheduler stays unwrapped: accelerate's wrapper steps it once per process on every call, which under
    # DDP would run the warmup/decay `world` times too fast (one optimizer step here is one global batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    aux_opt = aux_sched = None
    if aux is not None:
        aux_opt = torch.optim.AdamW(aux.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        aux_sched = torch.optim.lr_scheduler.LambdaLR(aux_opt, lr_lambda(cfg))
    if state is not None:
        load_optimizer_state(model, opt, state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if aux is not None:
            if "aux" not in state:
                raise UserError("the checkpoint has no auxiliary-module state to resume this stage from")
            aux.load_state_dict(state["aux"]["module"])
            aux_opt.load_state_dict(state["aux"]["optimizer"])
            aux_sched.load_state_dict(state["aux"]["scheduler"])
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = out_dir / "metrics.jsonl"
    if acc.is_main_process and metrics_path.exists():
        if not resume:
            metrics_path.unlink()
        else:  # drop what a crashed run logged after its last checkpoint (those steps are redone) and torn lines
            metrics_path.write_text("".join(ln + "\n" for ln in metrics_path.read_text().splitlines()
                                            if _logged_step(ln) <= start_step))

    def save(step: int) -> None:
        acc.wait_for_everyone()
        weights = full_model_state(model) if sharded else None  # collectives: every rank takes part
        opt_state = optimizer_state(model, opt)
        if acc.is_main_process:
            trainer_state = {"step": step, "optimizer": opt_state, "scheduler": sched.state_dict(),
                             "config": cfg.to_dict(), "stage": stage}
            if aux is not None:
                trainer_state["aux"] = {"module": aux.state_dict(), "optimizer": aux_opt.state_dict(),
                                        "scheduler": aux_sched.state_dict()}
            save_checkpoint(out_dir, step, acc.unwrap_model(model), tokenizer, image_processor, settings,
                            trainer_state, state_dict=weights)
            prune_checkpoints(out_dir, cfg.keep_checkpoints)
        acc.wait_for_everyone()

    bar = tqdm(total=cfg.max_steps, initial=start_step, desc=f"train {stage}", disable=not (acc.is_main_process and progress),
               dynamic_ncols=True)
    last = {}
    t0 = time.perf_counter()
    for step in range(start_step, cfg.max_steps):
        model.train()
        if aux is not None:
            aux.train()
        idx, epoch = global_batch_indices(len(train), cfg, step)
        mine = idx[rank * per_rank:(rank + 1) * per_rank]
        total, agg = 0.0, {}
        for m in range(accum):
            chunk = mine[m * micro:(m + 1) * micro]
            last_micro = m == accum - 1
            if sharded:
                set_gradient_sync(model, last_micro)
            ctx = acc.no_sync(model) if not (last_micro or sharded) else contextlib.nullcontext()
            with ctx:
                with acc.autocast():  # the sharded model is not wrapped by accelerate, which would autocast it
                    loss, mets = objective(model, [train[i] for i in chunk], chunk, epoch)
                acc.backward(loss / accum)  # a non-finite loss is caught below, before any update
            total += float(loss.detach()) / accum
            for k, v in mets.items():
                agg[k] = agg.get(k, 0.0) + v / accum
        # the norm (after the gradient all-reduce, so every rank agrees) is needed even without clipping: a finite
        # loss can still have a NaN/inf gradient, and one update with it would poison the next checkpoint
        gnorm = full_norm(acc.clip_grad_norm_(params, cfg.clip if cfg.clip > 0 else math.inf))
        loss_t = torch.tensor([total], device=acc.device)
        total = float(acc.reduce(loss_t, reduction="mean")) if world > 1 else total
        if not (math.isfinite(total) and bool(torch.isfinite(gnorm))):
            what = f"loss is {total}" if not math.isfinite(total) else f"gradient norm is {float(gnorm)}"
            ckpt = latest_checkpoint(out_dir)
            kept = f"the last good checkpoint {ckpt} is kept" if ckpt else "no checkpoint was written yet"
            raise UserError(f"{what} at step {step + 1}: stopping before the update; {kept}")
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if aux is not None:
            torch.nn.utils.clip_grad_norm_(aux.parameters(), cfg.clip if cfg.clip > 0 else math.inf)
            aux_opt.step()
            aux_sched.step()
            aux_opt.zero_grad(set_to_none=True)
        last = {"step": step + 1, "loss": total, "lr": sched.get_last_lr()[0], "grad_norm": float(gnorm), "epoch": epoch,
                "elapsed_s": time.perf_counter() - t0, **agg}
        bar.update(1)
        bar.set_postfix(loss=f"{total:.4f}")
        done = step + 1 == cfg.max_steps
        if cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or done) and val:
            last["eval_loss"] = evaluate(model, objective, val[:cfg.eval_examples], cfg, acc)
        if acc.is_main_process and ((step + 1) % cfg.log_every == 0 or done or "eval_loss" in last):
            with metrics_path.open("a") as f:
                f.write(json.dumps(last) + "\n")
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and not done:
            save(step + 1)
    bar.close()
    save(cfg.max_steps)
    if acc.is_main_process:
        export_model_dir(checkpoint_dir(out_dir, cfg.max_steps), out_dir / "final")
    acc.wait_for_everyone()
    return last


@torch.no_grad()
def evaluate(model, objective: Objective, val: list, cfg: TrainConfig, acc) -> float:
    model.eval()
    losses = []
    for i in range(0, len(val), cfg.micro_batch_size):
        chunk = list(range(i, min(i + cfg.micro_batch_size, len(val))))
        with acc.autocast():
            loss, _ = objective(model, [val[j] for j in chunk], [10_000_000 + j for j in chunk], 0)
        losses.append(float(loss) * len(chunk))
    model.train()
    return sum(losses) / max(1, len(val))


def _logged_step(line: str) -> float:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf
