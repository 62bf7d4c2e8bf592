"""`echocxr demo`: the README's first command. Writes a report for a CXR-Phantom study with the built-in model.

The built-in model is a small Qwen2.5-VL trained by echocxr itself on CXR-Phantom (AR -> RAD -> DCD,
`scripts/train_demo_model.sh`) and shipped in the package; it decodes a block of tokens per forward.
The demo prints the study's true findings, the findings the report states, whether they match, and
the report's validity against the phantom grammar; `--card` prints the model card instead.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from echocxr.cli.report import add_decode_arguments

DEFAULT_RENDER_SIZE = 256  # for a model that records no training image size


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model directory or 'builtin' (default: the built-in CXR-Phantom model)")
    p.add_argument("--case", type=int, default=4, help="CXR-Phantom case index (default 4)")
    p.add_argument("--phantom-seed", type=int, default=2026, help="CXR-Phantom seed (default 2026)")
    p.add_argument("--image", nargs="+", metavar="FILE", help="use these views instead of a phantom study")
    p.add_argument("--save-image", metavar="FILE.png", help="also write the phantom study's image here")
    p.add_argument("--lang", default="en", choices=["en", "zh"])
    p.add_argument("--json", action="store_true")
    p.add_argument("--card", action="store_true", help="print the model card (data, recipe, metrics, limits) and exit")
    add_decode_arguments(p)


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from echocxr.backbones.builtin import model_dir_or_builtin
    from echocxr.backbones.settings import read_settings
    from echocxr.cli.report import decode_config_from_args, load_engine, print_warnings
    from echocxr.data.images import load_image
    from echocxr.errors import UserError

    model_dir = Path(model_dir_or_builtin(args.model))
    if not (model_dir / "config.json").is_file():
        raise UserError(f"no model at {model_dir} (no config.json)")
    if args.card:
        return _print_card(model_dir)
    truth: list[str] | None = None
    if args.image:
        images = [load_image(p) for p in args.image]
        source = ", ".join(args.image)
    else:
        from echocxr.data.phantom import render_case, sample_case

        if args.case < 0:
            raise UserError("--case must be >= 0")
        case = sample_case(args.phantom_seed, args.case)
        size = read_settings(model_dir).image_size or DEFAULT_RENDER_SIZE  # rendered as the model was trained
        images = [Image.fromarray(render_case(case, size=size)[0]).convert("RGB")]
        truth = list(case.labels)
        source = f"CXR-Phantom seed {args.phantom_seed}, case {args.case}"
        if args.save_image:
            images[0].save(args.save_image)
    engine = load_engine(str(model_dir), args)
    cfg = decode_config_from_args(engine, args)
    gen = engine.generate([engine.encode(images, lang=args.lang)], cfg)[0]
    print_warnings(gen.warnings, "echocxr demo")
    stated = match = None
    if truth is not None:
        from echocxr.data.labeler import label_report

        stated = label_report(gen.text, args.lang)
        match = set(stated) == set(truth)
    validity = _report_validity(gen.text, args.lang)
    if args.json:
        print(json.dumps({"report": gen.text, **gen.stats(), "study": source, "true_findings": truth,
                          "findings_in_report": stated, "findings_match": match, "validity": validity,
                          "warnings": gen.warnings, "model": str(model_dir)}, ensure_ascii=False))
        return 0
    name = "built-in CXR-Phantom model" if args.model in (None, "builtin") else str(model_dir)
    s = engine.bb.settings
    steps = f", {cfg.steps} steps" if cfg.decoder == "multistep" else ""
    print(f"study : {source}")
    if truth is not None:
        print(f"truth : {', '.join(truth) or 'no finding'}")
    print(f"model : {name} ({s.stage or 'model'}; decoder {cfg.decoder}{steps}, block length {cfg.block_length})")
    print("-" * 78)
    print(gen.text)
    print("-" * 78)
    if stated is not None:
        print(f"findings stated in the report: {', '.join(stated) or 'no finding'}"
              f"  [{'matches' if match else 'differs from'} the truth]")
    if validity is not None:
        print(validity)
    print(f"{gen.tokens} tokens in {gen.forwards} forwards (TPF {gen.tpf:.2f}); "
          f"prefill {gen.prefill_s * 1000:.0f} ms, decode {gen.decode_s * 1000:.0f} ms")
    return 0


def _print_card(model_dir: Path) -> int:
    from echocxr.backbones.card import read_model_card
    from echocxr.errors import UserError

    card = read_model_card(model_dir)
    if card is None:
        raise UserError(f"no model card (MODEL_CARD.md) in {model_dir}")
    print(card.rstrip())
    return 0


def _report_validity(text: str, lang: str) -> str | None:
    """One line: is the report an exactly valid CXR-Phantom report (every sentence one phrasing of one
    statement, each statement once, in order)? None (line omitted) when the grammar cannot read it at all."""
    from echocxr.metrics.coherence import report_coherence

    try:
        c = report_coherence(text, lang, "normalised")
    except ValueError:
        return None
    if c.valid:
        return f"report validity: valid ({c.n_sentences} of {c.n_sentences} sentences are grammar phrasings)"
    issues = [f"{c.n_valid_sentences} of {c.n_sentences} sentences valid"]
    issues += [f"{c.repeated} repeated"] if c.repeated else []
    issues += [f"{len(c.missing)} missing"] if c.missing else []
    issues += [f"{len(c.unexpected)} unexpected"] if c.unexpected else []
    issues += ["out of order"] if not c.in_order else []
    return "report validity: not valid (" + ", ".join(issues) + ")"
