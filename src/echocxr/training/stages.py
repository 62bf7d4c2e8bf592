"""Stage runners: AR SFT -> RAD -> DCD (and the baselines), each from a model directory to a model directory."""

from __future__ import annotations

import functools
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from echocxr.backbones.settings import ModelSettings
from echocxr.errors import UserError
from echocxr.training.config import DISTILLATION_STAGES, TrainConfig
from echocxr.training.examples import build_examples
from echocxr.training.objectives import ARObjective, DCDObjective, PromptPositions, RADObjective, TokenIds
from echocxr.training.run_dir import changed_settings, check_run_folder, clear_run_folder, read_run_folder


@dataclass
class StageRequest:
    stage: str
    cfg: TrainConfig
    out: Path
    from_dir: Path | None = None
    data_dir: Path | None = None
    languages: tuple[str, ...] = ("en",)
    resume: bool = False
    overwrite: bool = False  # delete a previous run's files in `out` first
    progress: bool = True


def ensure_data(req: StageRequest) -> Path:
    """The manifests' directory: --data, or the phantom set the recipe makes, once, in the cache folder
    (`<cache>/phantoms/<spec>`, named in the run's summary) so every stage and run of that recipe shares it.
    A set an earlier version rendered beside the run (`<out>/../phantoms-...`) is still used."""
    if req.data_dir is not None:
        if not Path(req.data_dir).is_dir():
            raise UserError(f"data directory not found: {req.data_dir}")
        return Path(req.data_dir)
    spec = dict(n=256, seed=0, image_size=req.cfg.image_size or 128) | (req.cfg.phantoms or {})
    splits = tuple(spec.get("splits", (0.8, 0.1, 0.1)))
    name = f"phantoms-n{spec['n']}-s{spec['seed']}-{spec['image_size']}px"
    legacy = req.out.parent / name
    if (legacy / "train_en.json").is_file():
        return legacy
    if tuple(splits) != (0.8, 0.1, 0.1):
        name += "-split" + "-".join(f"{x:g}" for x in splits)
    from echocxr.cache import cache_root

    data = cache_root() / "phantoms" / name
    if not (data / "train_en.json").is_file():
        import os
        import shutil
        import sys

        from echocxr.data.phantom.generate import write_phantom_set

        print(f"echocxr train: rendering CXR-Phantom data ({spec['n']} studies) into {data} "
              "(set ECHOCXR_CACHE_DIR to put it elsewhere)", file=sys.stderr, flush=True)
        tmp = data.parent / f".tmp-{name}-{os.getpid()}"  # another process may render the same set meanwhile
        write_phantom_set(tmp, n=int(spec["n"]), seed=int(spec["seed"]), image_size=int(spec["image_size"]),
                          splits=splits, progress=req.progress)
        try:
            os.replace(tmp, data)
        except OSError:  # it got there first: the same bytes (deterministic), keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    return data


def read_split(data: Path, split: str, languages: tuple[str, ...]):
    from echocxr.data.manifest import load_manifest

    samples = []
    for lang in languages:
        path = data / f"{split}_{lang}.json"
        if path.is_file():
            samples += load_manifest(path)
    if split == "train" and not samples:
        raise UserError(f"no training manifests ({split}_<lang>.json for {', '.join(languages)}) in {data}")
    return samples


def new_tiny_backbone(cfg: TrainConfig, samples):
    """A fresh tiny Qwen2.5-VL with a BPE tokenizer trained on the training reports (for recipes)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from echocxr.backbones.loading import Backbone, eos_token_ids
    from echocxr.backbones.prompt import PROMPTS
    from echocxr.backbones.tiny import TINY_IMAGE_MAX_PIXELS, build_tiny_model
    from echocxr.backbones.tokenizer import train_bpe_tokenizer

    sizes = dict(cfg.tiny_model or {})
    vocab = int(sizes.pop("vocab_size", 1024))
    texts = [s.reference() for s in samples] + list(PROMPTS.values())
    tok = train_bpe_tokenizer(texts * 2, vocab_size=vocab)
    model = build_tiny_model("qwen2_5_vl", tok, seed=cfg.seed, **sizes)
    side = int(cfg.image_size or 0)
    ip = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=side * side if side else TINY_IMAGE_MAX_PIXELS)
    return Backbone(model=model, tokenizer=tok, image_processor=ip, mask_token_id=tok.mask_token_id,
                    eos_token_ids=eos_token_ids(model, tok))


def stage_settings(stage: str, cfg: TrainConfig, req: StageRequest | None = None,
                   data: Path | None = None) -> ModelSettings:
    """The trained model's echocxr.json: how to decode it, and what it was trained for (languages, decoders,
    image size and domain), so inference can resize its inputs and warn about requests outside them."""
    if stage in ("vision", "ar"):  # a vision-stage model is a (not yet trained) AR model
        s = ModelSettings(block_length=1, prefill="response_aligned", decoder="ar", steps=1, stage=stage,
                          decoders=["ar"])
    elif stage == "rad":  # the teacher decodes multistep; its native one-step decode is the paper's ablation
        s = ModelSettings(block_length=cfg.block_length, prefill="response_aligned", decoder="multistep",
                          steps=cfg.block_length, threshold=cfg.tau, stage="rad", decoders=["multistep", "onestep"])
    elif stage == "dcd":  # one step per block
        s = ModelSettings(block_length=cfg.block_length, prefill="response_aligned", decoder="onestep", steps=1,
                          stage=stage, decoders=["onestep"])
    else:  # a baseline distillation decodes as its paper does; one step per block is the comparison with DCD
        from echocxr.training.baselines import baseline_decoding

        s = ModelSettings(block_length=cfg.block_length, prefill="response_aligned", decoder="multistep",
                          stage=stage, decoders=["multistep", "onestep"],
                          **baseline_decoding(stage, cfg.block_length))
    phantom_info: dict = {}
    if data is not None and (Path(data) / "phantom.json").is_file():  # written by write_phantom_set
        try:
            phantom_info = json.loads((Path(data) / "phantom.json").read_text())
        except (OSError, json.JSONDecodeError):
            phantom_info = {}
    recipe_made = req is not None and req.data_dir is None
    s.languages = list(req.languages) if req is not None else []
    # the recipe's phantom size describes the data only when the recipe made it (not for --data)
    s.image_size = int(getattr(cfg, "image_size", 0) or (recipe_made and (cfg.phantoms or {}).get("image_size", 0))
                       or phantom_info.get("image_size", 0))
    s.domain = "cxr-phantom" if recipe_made or phantom_info else ""
    return s.validate()


def run_stage(req: StageRequest) -> dict:
    from accelerate import PartialState

    from echocxr.backbones.loading import load_backbone

    cfg, stage = req.cfg, req.stage
    if cfg.grow_layers and stage not in DISTILLATION_STAGES:
        raise UserError(f"grow_layers (--grow-layers) deepens a distilled student; stage {stage} has none")
    clock = _Clock()
    torch.manual_seed(cfg.seed)
    state = PartialState(cpu=not torch.cuda.is_available())  # must match the Accelerator made in loop.py
    mode = check_run_folder(req.out, stage, cfg.to_dict(), req.resume, req.overwrite)  # before any work
    if mode == "finished":
        return _finished_summary(req)
    if mode == "resume":
        changed = changed_settings(req.out, cfg.to_dict())
        if changed and state.is_main_process:
            warnings.warn(f"resuming {req.out} with other settings than it started with: {', '.join(changed)}",
                          stacklevel=2)
    if req.overwrite and state.is_main_process:
        clear_run_folder(req.out)
    state.wait_for_everyone()
    with state.main_process_first():  # rank 0 renders the phantom set once; the others then read it
        data = ensure_data(req)
    clock.lap("data_s")
    train_samples = read_split(data, "train", req.languages)
    if cfg.max_examples:
        train_samples = _first_per_language(train_samples, cfg.max_examples)
    val_samples = read_split(data, "val", req.languages)
    if req.from_dir is None:
        if stage not in ("vision", "ar"):
            raise UserError(f"stage {stage} needs --from (the {'AR' if stage == 'rad' else 'Base'} model directory)")
        bb = new_tiny_backbone(cfg, train_samples)
    else:
        bb = load_backbone(req.from_dir, dtype="float32")
        if stage in DISTILLATION_STAGES:
            _check_teacher(bb.settings, Path(req.from_dir), cfg.block_length)
    model, tok, ip = bb.model, bb.tokenizer, bb.image_processor
    model.train()
    if stage == "vision":
        if not bb.is_vision:
            raise UserError("stage vision needs a vision-language model")
        model.requires_grad_(False)  # only the tower trains; the language model stays as initialised
        model.model.visual.requires_grad_(True)
    elif cfg.freeze_vision and bb.is_vision:
        model.model.visual.requires_grad_(False)
    train, tstats = build_examples(train_samples, tok, ip, cfg.max_response_tokens)
    val, _ = build_examples(val_samples, tok, ip, cfg.max_response_tokens)
    clock.lap("load_s")
    positions = PromptPositions(model, bb.is_vision)
    ids = TokenIds(pad=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                   mask=bb.mask_token_id, eos=tok.eos_token_id, stops=tuple(bb.eos_token_ids))
    extra: dict = {"data": str(data), "train_examples": len(train), "skipped": tstats.skipped}
    aux = None
    if cfg.label_weight > 0 and stage not in ("ar", "dcd"):
        raise UserError(f"label_weight is a term of the ar and dcd stages, not of {stage}")
    if stage == "vision":
        from echocxr.training.vision import LabelHead, VisionLabelObjective, tokens_per_image

        train, val = _one_per_study(train), _one_per_study(val)  # the languages share the images
        labels = tuple(sorted({lab for e in train for lab in e.labels}))
        if not labels or not train:
            raise UserError("stage vision needs training samples with finding labels (manifest `labels`)")
        aux = LabelHead(tokens_per_image(train[0]), model.config.text_config.hidden_size, labels)
        objective = VisionLabelObjective(aux)
        extra["train_examples"], extra["labels"] = len(train), len(labels)
    elif stage == "ar":
        aux = _state_label_head(cfg, train, model, bb.is_vision)
        objective = ARObjective(positions, ids, bb.is_vision, aux, cfg.label_weight)
    elif stage == "rad":
        objective = RADObjective(positions, ids, bb.is_vision, cfg)
    else:
        from echocxr.decoding.engine import ReportEngine
        from echocxr.training.trajectories import collect_by_tie_setting, load_or_collect

        # Before training starts the student is the teacher (both are --from): decode with it, frozen by
        # inference mode, instead of loading the same weights again. Each rank decodes its share of the
        # examples; all read the joined cache entry.
        model.to(_device()).eval()
        engine = ReportEngine(bb)
        cache = req.out.parent / "trajectories"
        shard = dict(rank=state.process_index, world=state.num_processes, barrier=state.wait_for_everyone)
        def load(examples, setting, superset, progress=False):
            ratio, tie_break = setting
            return load_or_collect(cache, str(req.from_dir), engine, examples, cfg.block_length, cfg.tau,
                                   cfg.trajectory_topk, cfg.max_response_tokens, progress=progress,
                                   remasking=cfg.trajectory_remasking, tie_ratio=ratio, tie_break=tie_break,
                                   tie_margin=cfg.trajectory_tie_margin, superset=superset,
                                   batch_size=cfg.trajectory_batch_size, **shard)

        def setting_for(e):
            return (cfg.trajectory_tie_ratio_by_language.get(e.language, cfg.trajectory_tie_ratio),
                    cfg.trajectory_tie_break_by_language.get(e.language, cfg.trajectory_tie_break))

        trajs, st = collect_by_tie_setting(train, setting_for,
                                         functools.partial(load, progress=req.progress and state.is_main_process))
        vtrajs, _ = collect_by_tie_setting(val, setting_for, load)
        model.train()
        del engine
        if cfg.grow_layers:  # after the teacher decoded: it keeps its depth, the student starts as it
            from echocxr.backbones.depth import append_identity_layers

            extra["student_layers"] = append_identity_layers(model, cfg.grow_layers)
        train = [e for e in train if e.key in trajs]
        if len(train) < cfg.batch_size:
            raise UserError(f"the teacher finished only {st['kept']} of {st['kept'] + st['dropped_unfinished'] + st['dropped_loop']} "
                            f"training examples ({st['dropped_unfinished']} unfinished, {st['dropped_loop']} in repetition "
                            f"loops): too few for a batch of {cfg.batch_size}; train the teacher longer")
        val = [e for e in val if e.key in vtrajs]
        trajs.update(vtrajs)
        extra["trajectories"] = st
        clock.lap("trajectories_s")
        if stage == "dcd":
            aux = _state_label_head(cfg, train, model, bb.is_vision)
            objective = DCDObjective(positions, ids, bb.is_vision, cfg, trajs, aux)
        else:
            from echocxr.training.baselines import make_baseline_objective

            options = {"num_train": len(train)} if stage in ("d3llm", "t3d") else {}
            objective = make_baseline_objective(stage, positions, ids, bb.is_vision, cfg, trajs, **options)
    req.out.mkdir(parents=True, exist_ok=True)
    if state.is_main_process:
        (req.out / "train_config.json").write_text(
            json.dumps({"stage": stage, **cfg.to_dict(), **extra}, indent=1, default=str))
    from echocxr.training.loop import run_training

    last = run_training(model, objective, train, val, cfg, req.out, tok, ip, stage_settings(stage, cfg, req, data),
                        resume=mode == "resume", stage=stage, progress=req.progress, aux=aux)
    clock.lap("train_s")
    if stage == "vision" and state.is_main_process:
        from echocxr.training.vision import label_scores

        model.eval()
        extra["val_labels"] = label_scores(model, aux, val)
    summary = {"stage": stage, "out": str(req.out), "final_model": str(req.out / "final"), **extra, "last": last,
               "timings": clock.laps}
    if state.is_main_process:
        (req.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def _check_teacher(settings: ModelSettings, from_dir: Path, block_length: int) -> None:
    """The teacher decodes its trajectories and the student trains in the RAD layout, both with blocks aligned
    to the response: a model released for the prompt's block grid (official ECHO checkpoints), or one trained
    at another block length, would be decoded in a mode it was not trained for."""
    from echocxr.backbones.settings import SETTINGS_FILE

    if settings.prefill != "response_aligned":
        raise UserError(f"{from_dir} decodes with {settings.prefill} prefill (blocks on the prompt's grid, as official "
                        "ECHO checkpoints): distillation here aligns blocks with the response; start from a Base "
                        "trained by `echocxr train rad`")
    if (from_dir / SETTINGS_FILE).is_file() and settings.block_length != block_length:
        raise UserError(f"{from_dir} was trained at block length {settings.block_length}, not {block_length}: "
                        f"pass --block-length {settings.block_length} (or train a Base at {block_length})")


def _finished_summary(req: StageRequest) -> dict:
    """What a --resume of a finished run returns: its summary, marked, and nothing trained."""
    try:
        summary = json.loads((req.out / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {"stage": req.stage, "out": str(req.out), "final_model": str(req.out / "final"), "last": {}}
    return {**summary, "already_finished": True, "steps_done": read_run_folder(req.out).last_step}


def _first_per_language(samples: list, n: int) -> list:
    seen: dict[str, int] = {}
    out = []
    for s in samples:
        seen[s.language] = seen.get(s.language, 0) + 1
        if seen[s.language] <= n:
            out.append(s)
    return out


def _state_label_head(cfg: TrainConfig, train: list, model, is_vision: bool):
    """The label term's training-only head (AR and DCD), or None when `label_weight` is 0."""
    if cfg.label_weight <= 0:
        return None
    from echocxr.training.vision import StateLabelHead

    labels = tuple(sorted({lab for e in train for lab in e.labels}))
    if not labels:
        raise UserError("label_weight needs training samples with finding labels (manifest `labels`)")
    return StateLabelHead(model.config.text_config.hidden_size if is_vision else model.config.hidden_size, labels)


def _one_per_study(examples: list) -> list:
    seen: set[str] = set()
    out = []
    for e in examples:
        if e.sample_id not in seen:
            seen.add(e.sample_id)
            out.append(e)
    return out


class _Clock:
    """Wall seconds of each part of a stage (summary.json's `timings`: where a stage's time goes)."""

    def __init__(self):
        import time

        self._now, self.laps = time.perf_counter, {}
        self._last = self._now()

    def lap(self, name: str) -> None:
        now = self._now()
        self.laps[name] = round(now - self._last, 3)
        self._last = now


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
