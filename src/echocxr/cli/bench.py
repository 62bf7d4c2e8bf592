"""`echocxr bench train-flops`: RAD vs full-duplication training cost, computed and measured.
`echocxr bench decode`: every decoder side by side in one run (echocxr.decoding.bench)."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    f = sub.add_parser("train-flops", help="training FLOPs of RAD vs full duplication; optionally time a step")
    f.add_argument("--prompt-len", type=int, default=1300, help="vision + instruction tokens (default 1300)")
    f.add_argument("--response-len", type=int, default=120, help="report tokens (default 120)")
    f.add_argument("--block-length", type=int, default=4)
    f.add_argument("--measure", action="store_true", help="also time a training step of each layout")
    f.add_argument("--model", help="--measure with this model directory (default: a small Qwen2 built here)")
    f.add_argument("--repeats", type=int, default=3)
    d = sub.add_parser("decode", help="decoding speed of every decoder in one run, random weights of a shape")
    d.add_argument("--shape", default="builtin", help="builtin (the packaged model) | 0.5b | 7b")
    d.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    d.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16")
    d.add_argument("--batch-sizes", default="1", help="comma-separated, e.g. 1,8,32 (default 1)")
    d.add_argument("--new-tokens", type=int, default=128, help="tokens each sample decodes (EOS ignored)")
    d.add_argument("--block-lengths", default="4,8", help="block lengths of the diffusion rows (default 4,8)")
    d.add_argument("--rows", default="", help="only these rows (comma-separated): hf-ar, ar, multistep, "
                   "onestep-vanilla, onestep-fused (their reference rows come along); default all")
    d.add_argument("--repeats", type=int, default=1, help="timed runs per row after a warm-up; the best counts")
    d.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="compile the fast path's step (default: on CUDA yes, on CPU no)")
    d.add_argument("--out", metavar="FILE.json", help="write the json here (and the table next to it, .md)")


def run(args: argparse.Namespace) -> int:
    if args.what == "decode":
        return run_decode(args)
    from echocxr.diffusion.flops import QWEN2_5_VL_7B, compare
    from echocxr.errors import UserError

    if args.prompt_len < 1 or args.response_len < 1 or args.block_length < 1:
        raise UserError("--prompt-len, --response-len and --block-length must be positive")
    out = {"model_shape": "Qwen2.5-VL-7B language model", **compare(QWEN2_5_VL_7B, args.prompt_len,
                                                                    args.response_len, args.block_length)}
    if args.measure:
        out["measured"] = measure_step(args)
    print(json.dumps(out, indent=1))
    return 0


def measure_step(args: argparse.Namespace) -> dict:
    """Time forward+backward of one sequence in each layout (median of --repeats)."""
    import statistics
    import time

    import torch

    from echocxr.backbones.prompt import EncodedPrompt
    from echocxr.diffusion.losses import mdlm_loss
    from echocxr.diffusion.sequences import build_diffusion_batch, pad_to_blocks
    from echocxr.training.objectives import slot_logits

    if args.model:
        from echocxr.backbones.loading import load_backbone

        bb = load_backbone(args.model, dtype="float32")
        model, vocab, mask_id, is_vision = bb.model, bb.model.config.get_text_config().vocab_size, bb.mask_token_id, bb.is_vision
    else:
        from transformers import Qwen2Config, Qwen2ForCausalLM

        torch.manual_seed(0)
        vocab, mask_id, is_vision = 1024, 1023, False
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, hidden_size=256, intermediate_size=512,
                                             num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2))
    model.train()
    prompt = EncodedPrompt(input_ids=torch.randint(0, vocab - 1, (args.prompt_len,)),
                           mm_token_type_ids=torch.zeros(args.prompt_len, dtype=torch.int32))
    clean = pad_to_blocks(torch.randint(0, vocab - 1, (args.response_len,)).tolist(), args.block_length, 0)
    noisy = [mask_id if i % 2 == 0 else t for i, t in enumerate(clean)]
    result = {}
    for layout in ("rad", "full"):
        times = []
        for _ in range(args.repeats + 1):
            batch = build_diffusion_batch([prompt], [clean], [noisy], args.block_length, None, 0, mask_id, layout)
            t0 = time.perf_counter()
            logits = slot_logits(model, batch, is_vision)
            loss = mdlm_loss(logits, batch.targets, batch.noised)
            loss.backward()
            model.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
        result[f"step_s_{layout}"] = statistics.median(times[1:])  # first run warms up
        result[f"tokens_{layout}"] = int(batch.input_ids.shape[1])
    result["speedup"] = result["step_s_full"] / result["step_s_rad"]
    return result


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    from echocxr.errors import UserError

    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UserError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise UserError(f"{flag} is empty")
    return values


def run_decode(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from echocxr.decoding.bench import BenchOptions, ratio_table, run_bench
    from echocxr.errors import UserError

    known = ("hf-ar", "ar", "multistep", "onestep-vanilla", "onestep-fused")
    rows = tuple(r.strip() for r in args.rows.split(",") if r.strip())
    if any(r not in known for r in rows):
        raise UserError(f"--rows: unknown row in {args.rows!r} (use: {', '.join(known)})")
    opts = BenchOptions(shape=args.shape, device=args.device, dtype=args.dtype,
                        batch_sizes=_int_list(args.batch_sizes, "--batch-sizes"), new_tokens=args.new_tokens,
                        block_lengths=_int_list(args.block_lengths, "--block-lengths"), compile=args.compile,
                        repeats=args.repeats, rows=rows)
    result = run_bench(opts, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    result["environment"]["command"] = "echocxr bench decode " + " ".join(sys.argv[sys.argv.index("decode") + 1:]) \
        if "decode" in sys.argv else None
    table = ratio_table(result)
    print(table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        out.with_suffix(".md").write_text(table + "\n")
        print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
    return 0
