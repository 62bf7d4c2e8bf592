"""`echocxr bench train-flops`: RAD vs full-duplication training cost, computed and measured."""

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


def run(args: argparse.Namespace) -> int:
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
