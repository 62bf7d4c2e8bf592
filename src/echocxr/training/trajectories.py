"""DCD phase 1: the teacher's own on-policy, confidence-thresholded multi-step trajectories.

The teacher decodes block by block with the engine's multi-step decoder (`low_confidence_dynamic`, one
forced commit per round, threshold tau; or `sequential`, left to right, one per round): every position it
commits is recorded with its full predicted distribution (top-k for big vocabularies), its token and the
round at which it was committed. With a tie ratio the teacher's greedy choice breaks near-ties between
tokens canonically (`sampling.sample_tokens`), so equally valid phrasings are picked the same way in every
context. Examples the teacher fails to finish, or finishes in a repetition loop, are
dropped. Trajectories are cached on disk, keyed by teacher, data and settings, so several students can reuse
them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from echocxr.backbones.settings import DEFAULT_TIE_BREAK, DEFAULT_TIE_MARGIN
from echocxr.decoding.engine import DecodeConfig, ReportEngine

FULL_DISTRIBUTION_MAX_VOCAB = 4096


@dataclass
class Trajectory:
    sample_id: str
    tokens: list[int]  # committed tokens, whole blocks
    index: torch.Tensor  # (R, K) vocabulary ids of the stored distribution
    probs: torch.Tensor  # (R, K) teacher probabilities at commit time
    steps: torch.Tensor  # (R,) 1-based round of its block at which each slot was committed


def has_repetition_loop(ids: list[int], min_repeats: int = 4, max_ngram: int = 8) -> bool:
    """True if the sequence ends in >= `min_repeats` back-to-back copies of one n-gram (n <= max_ngram)."""
    for n in range(1, max_ngram + 1):
        if len(ids) < n * min_repeats:
            break
        tail = ids[-n:]
        if all(ids[-(k + 1) * n: len(ids) - k * n] == tail for k in range(min_repeats)):
            return True
    return False


DEFAULT_REMASKING = "low_confidence_dynamic"


def teacher_config(block_length: int, tau: float, max_new_tokens: int,
                   remasking: str = DEFAULT_REMASKING, tie_ratio: float = 0.0,
                   tie_break: str = DEFAULT_TIE_BREAK, tie_margin: float = DEFAULT_TIE_MARGIN) -> DecodeConfig:
    return DecodeConfig(decoder="multistep", block_length=block_length, steps=block_length,
                        remasking=remasking, threshold=tau, max_new_tokens=max_new_tokens,
                        # the stage refuses any other teacher (stages._check_teacher): RAD trains response-aligned
                        prefill="response_aligned", record_logits=True, tie_ratio=tie_ratio,
                        tie_break=tie_break, tie_margin=tie_margin).validate()


def collect_trajectories(engine: ReportEngine, examples: list, block_length: int, tau: float, topk: int = 0,
                         batch_size: int = 16, max_new_tokens: int = 512, progress: bool = True,
                         remasking: str = DEFAULT_REMASKING,
                         tie_ratio: float = 0.0,
                         tie_break: str = DEFAULT_TIE_BREAK,
                         tie_margin: float = DEFAULT_TIE_MARGIN) -> tuple[dict[str, Trajectory], dict]:
    from tqdm.auto import tqdm

    cfg = teacher_config(block_length, tau, max_new_tokens, remasking, tie_ratio, tie_break, tie_margin)
    V = engine.model.get_output_embeddings().weight.shape[0]
    K = V if (topk == 0 and V <= FULL_DISTRIBUTION_MAX_VOCAB) else (topk or 64)
    out: dict[str, Trajectory] = {}
    stats = {"kept": 0, "dropped_unfinished": 0, "dropped_loop": 0}
    bar = tqdm(total=len(examples), desc="teacher trajectories", disable=not progress, dynamic_ncols=True)
    for b0 in range(0, len(examples), batch_size):
        chunk = examples[b0:b0 + batch_size]
        rec: dict[int, dict[int, tuple[int, torch.Tensor, torch.Tensor, int]]] = {i: {} for i in range(len(chunk))}

        def hook(ev, rec=rec):
            if ev.kind != "step":
                return
            probs = torch.softmax(ev.logits.float(), dim=-1)
            top = probs.topk(K, dim=-1) if K < V else None
            for j, c in enumerate(ev.committed):
                if c:
                    if top is not None:
                        idx, p = top.indices[j], top.values[j]
                    else:
                        idx, p = None, probs[j]
                    rec[ev.sample][ev.response_offset + j] = (ev.tokens[j], idx, p.half(), ev.step + 1)

        gens = engine.generate([e.prompt for e in chunk], cfg, on_event=hook)
        for i, (e, g) in enumerate(zip(chunk, gens, strict=True)):
            if g.stop != "eos":
                stats["dropped_unfinished"] += 1
                continue
            if has_repetition_loop(g.token_ids):
                stats["dropped_loop"] += 1
                continue
            slots = rec[i]
            R = max(slots) + 1
            if R % block_length or sorted(slots) != list(range(R)):
                raise RuntimeError("teacher trajectory has gaps: every slot of every block must be committed")
            out[e.key] = Trajectory(
                sample_id=e.sample_id,
                tokens=[slots[j][0] for j in range(R)],
                # the full distribution's ids are one shared row (a stride-0 view: saved and held once)
                index=(torch.arange(V).expand(R, V) if K == V else torch.stack([slots[j][1] for j in range(R)])),
                probs=torch.stack([slots[j][2] for j in range(R)]),
                steps=torch.tensor([slots[j][3] for j in range(R)]),
            )
            stats["kept"] += 1
        bar.update(len(chunk))
    bar.close()
    return out, stats


TieSetting = tuple[float, str]  # (tie ratio, tie break) of one group of examples' teacher


def collect_by_tie_setting(examples: list, setting_for: Callable[[object], TieSetting],
                           load: Callable[[list, TieSetting, list | None], tuple[dict, dict]]) -> tuple[dict, dict]:
    """Trajectories where each example's tie ratio and tie-break are `setting_for(example)` (e.g. one per
    language): one `load(group, setting, superset)` (load_or_collect with that setting; `superset`, all the
    examples, lets it reuse a cache of the whole set at that setting) per distinct setting, over its examples in
    order, merged. With one setting it is one call over all examples, so the cache key is the same as without a
    per-example setting."""
    groups: dict[TieSetting, list] = {}
    for e in examples:
        groups.setdefault(setting_for(e), []).append(e)
    if len(groups) <= 1:
        return load(examples, next(iter(groups), (0.0, DEFAULT_TIE_BREAK)), None)
    trajs: dict = {}
    stats = {"kept": 0, "dropped_unfinished": 0, "dropped_loop": 0, "cached": True, "path": [], "tie_ratios": {}}
    for setting, group in groups.items():
        part, st = load(group, setting, examples)
        trajs.update(part)
        for k in ("kept", "dropped_unfinished", "dropped_loop"):
            stats[k] += st.get(k, 0)
        stats["cached"] = stats["cached"] and bool(st.get("cached"))
        stats["path"].append(st.get("path"))
        ratio, tie_break = setting
        stats["tie_ratios"][str(ratio) if tie_break == DEFAULT_TIE_BREAK else f"{ratio} {tie_break}"] = len(group)
    return trajs, stats


def trajectory_key(teacher_dir: str, examples: list, block_length: int, tau: float, topk: int,
                   max_new_tokens: int, remasking: str = DEFAULT_REMASKING, tie_ratio: float = 0.0,
                   tie_break: str = DEFAULT_TIE_BREAK, tie_margin: float = DEFAULT_TIE_MARGIN) -> str:
    h = hashlib.sha256()
    settings = [str(Path(teacher_dir).resolve()), block_length, tau, topk, max_new_tokens]
    if remasking != DEFAULT_REMASKING:  # keys of caches written before the setting existed stay valid
        settings.append(remasking)
    if tie_ratio:
        settings.append(f"tie_ratio={tie_ratio!r}")
    if tie_ratio and tie_break != DEFAULT_TIE_BREAK:
        settings.append(f"tie_break={tie_break}")
    if tie_ratio and tie_break == "image":
        settings.append(f"tie_margin={tie_margin!r}")
    h.update(json.dumps(settings).encode())
    for f in sorted(Path(teacher_dir).glob("*.safetensors")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    for e in examples:
        h.update(e.key.encode())
        h.update(bytes(str(e.prompt.input_ids.tolist()[-8:]), "utf8"))
    return h.hexdigest()[:16]


def load_or_collect(cache_dir: Path, teacher_dir: str, engine: ReportEngine, examples: list, block_length: int,
                    tau: float, topk: int = 0, max_new_tokens: int = 512, progress: bool = True,
                    rank: int = 0, world: int = 1, barrier: Callable[[], None] = lambda: None,
                    remasking: str = DEFAULT_REMASKING, tie_ratio: float = 0.0,
                    tie_break: str = DEFAULT_TIE_BREAK, superset: list | None = None, batch_size: int = 16,
                    tie_margin: float = DEFAULT_TIE_MARGIN):
    """Reuse `cache_dir/<key>.pt` when teacher, data and settings match; else collect and write it atomically.
    `superset`: examples that include these; a cache of them at the same settings serves these too (their
    entries as decoded within the whole set, batched with the others, which a decode of the subset alone need
    not match at a near-tie), so a per-language ratio reuses caches of the whole set. Its dropped examples
    count as unfinished there (the cache does not say which were loops).

    With `world` processes (every rank calls this, `barrier` synchronises them) each rank decodes every
    world-th example and writes its part; rank 0 joins the parts into the one cache entry in example order,
    which all ranks then read. No rank idles while another decodes the whole set (which could also outlast
    a collective's timeout)."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = trajectory_key(teacher_dir, examples, block_length, tau, topk, max_new_tokens, remasking, tie_ratio,
                         tie_break, tie_margin)
    path = cache_dir / f"trajectories-{key}.pt"
    if world > 1:
        barrier()  # every rank has looked for the cache entry before anyone writes it
    if path.is_file():
        data = torch.load(path, weights_only=False)
        return data["trajectories"], {**data["stats"], "cached": True, "path": str(path)}
    if superset is not None:
        whole = cache_dir / ("trajectories-" + trajectory_key(teacher_dir, superset, block_length, tau, topk,
                                                              max_new_tokens, remasking, tie_ratio, tie_break,
                                                              tie_margin) + ".pt")
        if whole.is_file():
            have = torch.load(whole, weights_only=False)["trajectories"]
            trajs = {e.key: have[e.key] for e in examples if e.key in have}
            return trajs, {"kept": len(trajs), "dropped_unfinished": len(examples) - len(trajs), "dropped_loop": 0,
                           "cached": True, "path": str(whole)}
    mine = examples[rank::world]
    trajs, stats = collect_trajectories(engine, mine, block_length, tau, topk, batch_size=batch_size,
                                        max_new_tokens=max_new_tokens, progress=progress, remasking=remasking,
                                        tie_ratio=tie_ratio, tie_break=tie_break, tie_margin=tie_margin)
    entry = {"teacher": str(teacher_dir), "tau": tau, "block_length": block_length, "remasking": remasking,
             "tie_ratio": tie_ratio, "tie_break": tie_break, "tie_margin": tie_margin}
    if world == 1:
        _save_atomic({"trajectories": trajs, "stats": stats, **entry}, path)
        return trajs, {**stats, "cached": False, "path": str(path)}
    parts = [cache_dir / f"trajectories-{key}.part{r}of{world}.pt" for r in range(world)]
    if rank != 0:
        _save_atomic({"trajectories": trajs, "stats": stats}, parts[rank])
    barrier()
    if rank == 0:  # its own part is in memory: it reads the others' only, and keeps the joined entry
        shares = [{"trajectories": trajs, "stats": stats}] + [torch.load(p, weights_only=False) for p in parts[1:]]
        joined = {k: v for share in shares for k, v in share["trajectories"].items()}
        trajs = {e.key: joined[e.key] for e in examples if e.key in joined}
        stats = {k: sum(share["stats"][k] for share in shares) for k in stats}
        _save_atomic({"trajectories": trajs, "stats": stats, **entry}, path)
        for p in parts[1:]:
            p.unlink()
    barrier()
    if rank != 0:
        data = torch.load(path, weights_only=False)
        trajs, stats = data["trajectories"], data["stats"]
    return trajs, {**stats, "cached": False, "path": str(path)}


def _save_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(obj, tmp)
    tmp.replace(path)
