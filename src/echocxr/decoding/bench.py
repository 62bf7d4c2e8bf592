"""`echocxr bench decode`: every decoder side by side in one run, on random weights of a given shape.

Why one run: speed ratios are only comparable when measured on the same machine, load and model in the same
process. Rows: transformers `generate` (AR), our AR (reference and fast path), multi-step block 4 and 8,
one-step with the vanilla cache, one-step fused on the reference engine and on the fast path. EOS is ignored
(every sample decodes exactly `new_tokens`), so rows do the same work; a fast row must give the reference
row's tokens (`identical_to_reference`). Shapes: `builtin` (the packaged model itself), `0.5b` (a
Qwen2.5-0.5B-shaped language model with a small vision tower), `7b` (Qwen2.5-VL-7B with one 512x512 image,
about 330 vision tokens). Weights are random: speed does not depend on their values.
"""

from __future__ import annotations

import platform
import resource
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image

from echocxr.backbones.loading import Backbone, resolve_dtype
from echocxr.backbones.prompt import EncodedPrompt
from echocxr.backbones.settings import ModelSettings
from echocxr.decoding.engine import DecodeConfig, ReportEngine
from echocxr.decoding.fast_engine import FastPath
from echocxr.decoding.results import Generation
from echocxr.errors import UserError

SHAPES = ("builtin", "0.5b", "7b")

# language model / vision tower dimensions of the random shapes
_TEXT = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}
_VISION = {
    "0.5b": dict(depth=2, hidden_size=128, intermediate_size=256, num_heads=2, fullatt_block_indexes=[1],
                 window_size=112),
    "7b": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
               fullatt_block_indexes=[7, 15, 23, 31], window_size=112),
}
_IMAGE_SIDE = {"builtin": 256, "0.5b": 224, "7b": 512}


@dataclass
class BenchOptions:
    shape: str = "builtin"
    device: str = "cpu"
    dtype: str = "auto"
    batch_sizes: tuple[int, ...] = (1,)
    new_tokens: int = 128
    block_lengths: tuple[int, ...] = (4, 8)
    compile: bool | None = None  # fast path: None = per-device default
    repeats: int = 1
    rows: tuple[str, ...] = ()  # only these decoders ("" = all): hf-ar, ar, multistep, onestep-vanilla, onestep-fused
    seed: int = 0
    strict: bool = False  # a failing row raises (tests) instead of being recorded with its error

    def validate(self) -> BenchOptions:
        if self.shape not in SHAPES:
            raise UserError(f"unknown shape {self.shape!r} (use one of: {', '.join(SHAPES)})")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise UserError("--batch-sizes must be positive integers, e.g. 1,8,32")
        if not 1 <= self.new_tokens <= 4096:
            raise UserError(f"--new-tokens must be in 1..4096, got {self.new_tokens}")
        if not self.block_lengths or any(not 1 <= L <= 64 for L in self.block_lengths):
            raise UserError("--block-lengths must be in 1..64")
        if self.repeats < 1:
            raise UserError("--repeats must be at least 1")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise UserError(f"unknown device {self.device!r} (use cpu or cuda[:N])")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"device {self.device!r} requested but CUDA is not available")
        return self


# ---- models -------------------------------------------------------------------------------------------

def build_backbone(shape: str, device: str, dtype: torch.dtype, seed: int = 0) -> Backbone:
    """The built-in model, or random weights of a named shape with the built-in tokenizer (ids fit any vocab)."""
    from echocxr.backbones.builtin import model_dir_or_builtin

    model_dir = model_dir_or_builtin(None)
    if shape == "builtin":
        from echocxr.backbones.loading import load_backbone

        bb = load_backbone(model_dir, device=device, dtype=dtype)
        bb.eos_token_ids = []  # EOS ignored: every row decodes exactly new_tokens
        return bb
    import json
    from pathlib import Path

    from transformers import AutoTokenizer, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from echocxr.backbones.loading import read_chat_template
    from echocxr.backbones.tokenizer import MASK_TOKEN, QWEN_VL_CHAT_TEMPLATE

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.chat_template is None:
        tokenizer.chat_template = read_chat_template(Path(model_dir)) or QWEN_VL_CHAT_TEMPLATE
    ids = json.loads((Path(model_dir) / "config.json").read_text())
    mask_id = int(ids.get("mask_token_id") or tokenizer.convert_tokens_to_ids(MASK_TOKEN))
    text = dict(_TEXT[shape])
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    half = head_dim // 2
    section = [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]  # 7b: [16, 24, 24] as the real model
    text["rope_parameters"] = {"rope_type": "default", "mrope_section": section, "rope_theta": 1e6}
    text.update(max_position_embeddings=32768, rms_norm_eps=1e-6, bos_token_id=0, eos_token_id=2, pad_token_id=0)
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(_VISION[shape], out_hidden_size=text["hidden_size"], patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2),
        image_token_id=ids["image_token_id"], video_token_id=ids["video_token_id"],
        vision_start_token_id=ids["vision_start_token_id"], vision_end_token_id=ids["vision_end_token_id"],
        tie_word_embeddings=text["tie_word_embeddings"],
    )
    config.mask_token_id = mask_id
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, attn_implementation="sdpa", dtype=dtype)
    model.eval()
    side = _IMAGE_SIDE[shape]
    return Backbone(model=model, tokenizer=tokenizer, image_processor=_image_processor(side * side),
                    mask_token_id=mask_id, eos_token_ids=[],
                    settings=ModelSettings(block_length=8, prefill="block_grid"), path=f"random:{shape}")


def _image_processor(max_pixels: int):
    try:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
            Qwen2VLImageProcessorPil as Proc,
        )
    except ImportError:  # older transformers 5.x: the same processor under its former name
        from transformers import Qwen2VLImageProcessor as Proc
    return Proc(min_pixels=28 * 28, max_pixels=max_pixels)


def bench_image(shape: str, seed: int = 0) -> Image.Image:
    side = _IMAGE_SIDE[shape]
    pixels = np.random.default_rng(seed).integers(0, 255, (side, side), dtype=np.uint8)
    return Image.fromarray(pixels, mode="L").convert("RGB")


# ---- rows ---------------------------------------------------------------------------------------------

@dataclass
class _Row:
    decoder: str
    path: str  # transformers | reference | fast
    cfg: DecodeConfig
    reference: str | None = None  # key of the row whose tokens this one must equal


def plan_rows(opts: BenchOptions, prefill: str) -> list[_Row]:
    n = opts.new_tokens
    base = DecodeConfig(max_new_tokens=n, prefill=prefill, use_cache=True)
    rows = [_Row("ar", "reference", replace(base, decoder="ar")),
            _Row("ar", "transformers", replace(base, decoder="ar"), "ar/reference"),
            _Row("ar", "fast", replace(base, decoder="ar"), "ar/reference")]
    for L in opts.block_lengths:
        rows.append(_Row(f"multistep-b{L}", "reference", replace(
            base, decoder="multistep", block_length=L, steps=max(1, L // 2), remasking="low_confidence_static")))
    for L in opts.block_lengths:
        one = replace(base, decoder="onestep", block_length=L)
        rows += [_Row(f"onestep-fused-b{L}", "reference", one),
                 _Row(f"onestep-vanilla-b{L}", "reference", replace(one, fused=False), f"onestep-fused-b{L}/reference"),
                 _Row(f"onestep-fused-b{L}", "fast", one, f"onestep-fused-b{L}/reference")]
    if opts.rows:  # a subset, plus the reference rows their identity check needs
        keep = [r for r in rows if _row_name(r) in opts.rows]
        needed = {r.reference for r in keep if r.reference}
        rows = [r for r in rows if r in keep or f"{r.decoder}/{r.path}" in needed]
    return rows


def _row_name(r: _Row) -> str:
    return "hf-ar" if r.path == "transformers" else r.decoder.rsplit("-b", 1)[0]


class _Timer:
    def __init__(self, device: torch.device):
        self.device = device

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # CPU: the process's peak RSS so far


def _engine_run(generate, prompts, cfg, warm: bool) -> list[Generation]:
    """One decode; `warm`: a short one first (a fast row then compiles/captures every shape it will use)."""
    if warm:
        calls = {"n": 0}

        def cancel_after_two_steps(i: int) -> bool:
            calls["n"] += 1
            return calls["n"] > len(prompts)

        generate(prompts, cfg, is_cancelled=cancel_after_two_steps)
    return generate(prompts, cfg)


def _hf_generate(model, prompts: list[EncodedPrompt], n: int, suppress: list[int]):
    p = prompts[0]
    dev = next(model.parameters()).device
    B = len(prompts)
    inputs = dict(input_ids=p.input_ids[None].expand(B, -1).to(dev),
                  attention_mask=torch.ones(B, p.length, dtype=torch.long, device=dev),
                  mm_token_type_ids=p.mm_token_type_ids[None].expand(B, -1).to(dev))
    if p.pixel_values is not None:
        inputs.update(pixel_values=torch.cat([p.pixel_values] * B).to(dev),
                      image_grid_thw=torch.cat([p.image_grid_thw] * B).to(dev))
    out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None,
                         pad_token_id=0, suppress_tokens=suppress)
    return out[:, p.length:].tolist()


def run_row(row: _Row, engine: ReportEngine, fast: FastPath, prompts, opts: BenchOptions, timer: _Timer) -> dict:
    """Time one row at one batch size (best of `repeats` after a warm-up) -> the json row and its tokens."""
    B = len(prompts)
    best = None
    tokens: list[list[int]] = []
    compile_before = fast.compile_s
    _peak_reset(timer.device)
    for rep in range(opts.repeats):
        if row.path == "transformers":
            suppress = engine.suppress.tolist()
            if rep == 0:
                _hf_generate(engine.model, prompts, 2, suppress)  # warm-up
            t0 = timer.now()
            _hf_generate(engine.model, prompts, 1, suppress)
            prefill = timer.now() - t0
            t0 = timer.now()
            tokens = _hf_generate(engine.model, prompts, opts.new_tokens, suppress)
            total = timer.now() - t0
            m = dict(decode_s=max(total - prefill, 1e-9), prefill_s=prefill, tokens=B * opts.new_tokens,
                     forwards=opts.new_tokens, tpf=1.0)
        else:
            generate = fast.generate if row.path == "fast" else engine.generate
            gens = _engine_run(generate, prompts, row.cfg, warm=rep == 0)
            tokens = [g.token_ids for g in gens]
            m = dict(decode_s=max(g.decode_s for g in gens), prefill_s=gens[0].prefill_s,
                     tokens=sum(g.tokens for g in gens), forwards=max(g.forwards for g in gens),
                     tpf=sum(g.tpf for g in gens) / len(gens))
        if best is None or m["decode_s"] < best["decode_s"]:
            best = m
    out = {
        "decoder": row.decoder, "path": row.path, "batch_size": B,
        "block_length": 1 if row.cfg.decoder == "ar" else row.cfg.block_length,
        "tps": best["tokens"] / best["decode_s"],
        "tps_with_prefill": best["tokens"] / (best["decode_s"] + best["prefill_s"]),
        "tpf": best["tpf"],
        "ms_per_forward": 1000 * best["decode_s"] / max(best["forwards"], 1),
        "peak_mem_mb": _peak_mb(timer.device),
        "identical_to_reference": None,
        "decode_s": best["decode_s"], "prefill_s": best["prefill_s"], "tokens": best["tokens"],
        "forwards": best["forwards"],
    }
    if row.path == "fast":
        out["compiled"] = fast.compile
        out["compile_s"] = fast.compile_s - compile_before
    return {"row": out, "tokens": tokens}


def run_bench(opts: BenchOptions, progress=print, on_update=None) -> dict:
    """All rows at every batch size; returns {"rows": [...], "environment": {...}}.

    on_update(result): called after every row with the result so far (a long run keeps what it measured)."""
    opts.validate()
    torch.manual_seed(opts.seed)
    dtype = resolve_dtype(opts.dtype, opts.device)
    t0 = time.perf_counter()
    bb = build_backbone(opts.shape, opts.device, dtype, opts.seed)
    build_s = time.perf_counter() - t0
    engine = ReportEngine(bb)
    fast = FastPath(engine, compile=opts.compile)
    timer = _Timer(engine.device)
    prefill = bb.settings.prefill
    prompt = engine.encode([bench_image(opts.shape, opts.seed)])
    rows = plan_rows(opts, prefill)
    env = _environment(opts, engine, fast, dtype, prompt, build_s)
    results: list[dict] = []
    result = {"rows": results, "environment": env}
    for B in opts.batch_sizes:
        prompts = [prompt] * B
        tokens: dict[str, list] = {}
        for row in rows:
            progress(f"bench decode: {opts.shape} batch {B}: {row.decoder} ({row.path})")
            try:
                r = run_row(row, engine, fast, prompts, opts, timer)
            except Exception as exc:  # noqa: BLE001 - one failing row (e.g. out of memory) must not lose the rest
                if opts.strict:
                    raise
                progress(f"bench decode: {row.decoder} ({row.path}) at batch {B} failed: {type(exc).__name__}: {exc}")
                results.append({"decoder": row.decoder, "path": row.path, "batch_size": B,
                                "error": f"{type(exc).__name__}: {exc}"[:500]})
                if engine.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            key = f"{row.decoder}/{row.path}"
            tokens[key] = r["tokens"]
            if row.reference is not None and row.reference in tokens:
                r["row"]["identical_to_reference"] = r["tokens"] == tokens[row.reference]
            results.append(r["row"])
            env.update(capture_error=fast.capture_error, fast_compile_s=fast.compile_s)
            if on_update is not None:
                on_update(result)
    return result


def _environment(opts: BenchOptions, engine: ReportEngine, fast: FastPath, dtype, prompt, build_s: float) -> dict:
    cuda = engine.device.type == "cuda"
    return {
        "shape": opts.shape, "device": str(engine.device), "dtype": str(dtype).replace("torch.", ""),
        "batch_sizes": list(opts.batch_sizes), "new_tokens": opts.new_tokens, "block_lengths": list(opts.block_lengths),
        "prefill": engine.bb.settings.prefill, "prompt_tokens": prompt.length,
        "vision_tokens": int(prompt.mm_token_type_ids.sum()),
        "parameters": sum(p.numel() for p in engine.model.parameters()), "fast_compiled": fast.compile,
        "fast_backend": fast.backend if fast.compile else "eager", "attention": fast.attention,
        "capture_error": None, "fast_compile_s": 0.0, "repeats": opts.repeats, "model_build_s": build_s,
        "torch": torch.__version__, "transformers": _transformers_version(), "python": platform.python_version(),
        "machine": platform.machine(), "cpu_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(engine.device) if cuda else None,
        "eos": "ignored: every sample decodes exactly new_tokens",
        "peak_mem_note": "CUDA: max allocated in the row" if cuda else "CPU: the process's peak RSS so far (monotonic)",
    }


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def ratio_table(result: dict) -> str:
    """Markdown table: every row and batch size with its tokens/s and its ratio to our best AR there."""
    rows = result["rows"]
    lines = ["| decoder | path | batch | tokens/s | x best AR | tokens/s incl. prefill | TPF | ms/forward | "
             "peak MB | identical |", "|---|---|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    for B in sorted({r["batch_size"] for r in rows}):
        here = [r for r in rows if r["batch_size"] == B and "error" not in r]
        ours = [r["tps"] for r in here if r["decoder"] == "ar" and r["path"] != "transformers"]
        best_ar = max(ours) if ours else None
        for r in here:
            ratio = f"{r['tps'] / best_ar:.2f}x" if best_ar else "-"
            ident = {None: "", True: "yes", False: "**no**"}[r["identical_to_reference"]]
            lines.append(f"| {r['decoder']} | {r['path']} | {B} | {r['tps']:.1f} | {ratio} | "
                         f"{r['tps_with_prefill']:.1f} | {r['tpf']:.2f} | {r['ms_per_forward']:.2f} | "
                         f"{r['peak_mem_mb']:.0f} | {ident} |")
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['decoder']} | {r['path']} | {r['batch_size']} | failed: {r['error'][:120]} |")
    return "\n".join(lines)
