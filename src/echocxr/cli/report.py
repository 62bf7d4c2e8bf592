"""`echocxr report`: write a report for one study (one or more views) with a model directory."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from echocxr.backbones.settings import (
    DECODERS,
    DEFAULT_TIE_MARGIN,
    PREFILL_MODES,
    REMASKING_STRATEGIES,
    TIE_BREAKS,
)
from echocxr.clinical.formats import FORMATS

if TYPE_CHECKING:
    from echocxr.clinical.formats import Rendered
    from echocxr.decoding.engine import DecodeConfig


def add_decode_arguments(p: argparse.ArgumentParser, model_args: bool = True) -> None:
    """Decoding options shared by report, eval, serve and bench (None = the model's own setting)."""
    g = p.add_argument_group("decoding")
    g.add_argument("--decoder", choices=DECODERS, help="ar | multistep | onestep (default: the model's)")
    g.add_argument("--block-length", type=int, help="tokens per block (default: the model's)")
    g.add_argument("--steps", type=int, help="multistep: denoising rounds per block")
    g.add_argument("--remasking", choices=REMASKING_STRATEGIES, help="multistep remasking strategy")
    g.add_argument("--threshold", type=float, help="low_confidence_dynamic threshold (default 0.85); for low_entropy_dynamic the entropy bound in nats")
    g.add_argument("--prefill", choices=PREFILL_MODES, help="block_grid (official checkpoints) or response_aligned")
    g.add_argument("--no-fused", action="store_true", help="one-step: vanilla block cache instead of the fused one")
    g.add_argument("--max-new-tokens", type=int, default=512)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--refine", type=float, default=0.0, metavar="T",
                   help="one-step: a block with any token at or below confidence T gets one more forward over "
                        "those tokens, seeing the rest (default 0: never; costs tokens per forward)")
    g.add_argument("--lookahead", type=int, metavar="N",
                   help="multistep: d3LLM's multi-block decoding, up to N blocks after the current one denoised "
                        "in the same forward, committing only tokens past --threshold (default: the model's, "
                        "usually 0: off)")
    g.add_argument("--lookahead-threshold", type=float, metavar="T",
                   help="with --lookahead: the next block joins once the last open one has this share of its "
                        "tokens committed (d3LLM's block_add_threshold; default: the model's, 0.1)")
    g.add_argument("--tie-ratio", type=float, default=0.0,
                   help="greedy tie-break: of the tokens at least this share of the top one's probability, "
                        "take the lowest id, the same choice in every context (default 0: plain argmax)")
    g.add_argument("--tie-break", choices=TIE_BREAKS,
                   help="with --tie-ratio: lowest_id (default); one_step: in a multi-step block, the near-top "
                        "token the block's first, all-masked forward ranks highest; image: lowest_id among the "
                        "near-top tokens the image does not tell apart (against a blank image; twice the compute)")
    g.add_argument("--tie-margin", type=float, metavar="NATS",
                   help=f"with --tie-break image: how far (nats) a token's gain from the image may be from the top "
                        f"token's and still tie (default {DEFAULT_TIE_MARGIN})")
    g.add_argument("--fast", action=argparse.BooleanOptionalAction, default=True,
                   help="static-cache fast path for one-step fused and AR decoding (default on; --no-fast: the "
                        "reference engine)")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="compile the fast path's fixed-shape step (default: on CUDA yes, on CPU no: compiling "
                        "takes longer than a one-off CPU report)")
    m = p.add_argument_group("model")
    if model_args:
        m.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
        m.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    m.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="attention implementation")


def decode_config_from_args(engine, args: argparse.Namespace):
    from echocxr.decoding.options import decode_config_from_options

    return decode_config_from_options(engine, args)


def load_engine(model_dir: str, args: argparse.Namespace):
    from echocxr.decoding.options import load_engine as load

    return load(model_dir, args)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".bmp", ".tif", ".tiff", ".webp")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model directory (ECHO, ECHO-Base, Qwen2.5-VL, echocxr-trained) or 'builtin' "
                   "(the default)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", nargs="+", metavar="FILE",
                     help="the study's views (PNG, JPEG, DICOM); several files = one multi-view study")
    src.add_argument("--dir", metavar="DIR", help="every image in DIR and its sub-folders is its own study "
                     "(batched; sample_id = the path under DIR without its suffix)")
    src.add_argument("--manifest", metavar="FILE", help="every record of a manifest is a study (batched)")
    p.add_argument("--lang", default="en", choices=["en", "zh"])
    p.add_argument("--format", choices=FORMATS, help="--image: text (the default), json (the report and its "
                   "stats), fhir (a FHIR R4 Bundle: DiagnosticReport + Observations) or dicom-sr (a DICOM "
                   "Comprehensive SR, in the source study when the views are DICOM; binary: use --out)")
    p.add_argument("--json", action="store_true", help="the same as --format json: the report, its stats and its "
                   "token confidence (pieces: text + confidence; sentences: mean and lowest confidence)")
    p.add_argument("--out", metavar="FILE", help="write the output here instead of stdout; --dir/--manifest: one "
                   "JSON line per study (a row's prefill_s/decode_s are its batch's wall times (stats.batch_size, "
                   "stats.timing = batch), an unreadable study's row carries \"error\" instead of a report)")
    p.add_argument("--batch-size", type=int, default=8, help="--dir/--manifest: studies decoded together")
    add_decode_arguments(p)


def run(args: argparse.Namespace) -> int:
    from echocxr.backbones.builtin import model_dir_or_builtin
    from echocxr.data.images import load_image

    args.model = model_dir_or_builtin(args.model)
    fmt = output_format(args)
    if args.image:
        from pathlib import Path

        from echocxr.errors import UserError

        if fmt == "dicom-sr" and not args.out and sys.stdout.isatty():
            raise UserError("--format dicom-sr writes a binary DICOM file: add --out FILE.dcm (or redirect stdout)")
        for path in args.image:
            if Path(path).is_dir():
                raise UserError(f"--image {path} is a directory: --image takes the files of one study; "
                                f"--dir {path} writes a report for every image in it")
        images = [load_image(path) for path in args.image]  # fail fast on a bad image, before loading the model
        engine = load_engine(args.model, args)
        cfg = decode_config_from_args(engine, args)
        gen = engine.generate([engine.encode(images, lang=args.lang)], cfg)[0]
        print_warnings(gen.warnings)
        if gen.stop == "length" and fmt != "json":  # JSON says it in "stop"
            print_warnings([truncation_warning(cfg.max_new_tokens)], "echocxr report")
        from echocxr.decoding.confidence import confidence_fields

        payload = {"report": gen.text, **gen.stats(), "model": args.model, "warnings": gen.warnings,
                   **confidence_fields(engine.bb.tokenizer, gen)}
        write_output(render_report(fmt, gen.text, args, cfg, payload), args.out)
        return 0
    if args.format not in (None, "json"):
        from echocxr.errors import UserError

        raise UserError(f"--format {args.format} takes one study (--image); --dir/--manifest write JSON lines")
    return run_many(args)


def output_format(args: argparse.Namespace) -> str:
    """--format, with --json as its alias; text when neither is given."""
    from echocxr.errors import UserError

    if args.json and args.format not in (None, "json"):
        raise UserError(f"--json means --format json: it conflicts with --format {args.format}")
    return "json" if args.json else (args.format or "text")


def render_report(fmt: str, text: str, args: argparse.Namespace, cfg: DecodeConfig, payload: dict) -> Rendered:
    """The report in `fmt`; FHIR and DICOM SR name the model and decoder and cite the DICOM views."""
    from echocxr.clinical.formats import render
    from echocxr.clinical.record import ClinicalReport, describe_decoder, model_label
    from echocxr.clinical.sources import headers_from_files

    sources = headers_from_files(args.image) if fmt in ("fhir", "dicom-sr") else ()
    report = ClinicalReport(text, args.lang, model_label(args.model), describe_decoder(cfg), sources)
    return render(fmt, report, payload)


def write_output(out: Rendered, path: str | None) -> None:
    """A rendered report to `path`, else stdout (binary output as bytes)."""
    if path:
        from pathlib import Path

        from echocxr.errors import UserError

        try:
            Path(path).write_bytes(out.body if out.binary else out.body + b"\n")
        except OSError as exc:
            raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    elif out.binary:
        sys.stdout.buffer.write(out.body)
        sys.stdout.flush()
    else:
        print(out.body.decode("utf-8"))


def truncation_warning(max_new_tokens: int, n: int | None = None) -> str:
    who, it = ("the report", "it") if n is None else (f"{n} reports", "they")
    return f"{who} stopped at the token limit (--max-new-tokens {max_new_tokens}) before <eos>: {it} may be cut short"


def print_warnings(lines, verb: str = "echocxr") -> None:
    """Each warning as one stderr line (stdout stays the report or its JSON)."""
    import sys

    for line in lines:
        print(f"{verb}: warning: {line}", file=sys.stderr)


def list_studies(args: argparse.Namespace) -> list:
    """The studies of --dir (one image each) or --manifest."""
    from pathlib import Path

    from echocxr.decoding.studies import Study
    from echocxr.errors import UserError

    if args.dir:
        d = Path(args.dir)
        if not d.is_dir():
            raise UserError(f"directory not found: {d}")
        files = sorted(f for f in d.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()
                       and not any(part.startswith(".") for part in f.relative_to(d).parts))
        if not files:
            raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {d} or its sub-folders")
        # CheXpert / MIMIC trees repeat file names (view1_frontal.jpg) in every study folder: the id is the path
        return [Study(f.relative_to(d).with_suffix("").as_posix(), [str(f)], args.lang) for f in files]
    from echocxr.data.manifest import load_manifest

    samples = load_manifest(args.manifest)
    if not samples:
        raise UserError(f"manifest {args.manifest} has no records")
    return [Study(s.sample_id, s.images, s.language or args.lang) for s in samples]


def run_many(args: argparse.Namespace) -> int:
    """Batched reports with a progress bar; a study whose image cannot be read is reported and skipped."""
    import sys

    from echocxr.decoding.studies import decode_studies
    from echocxr.errors import UserError

    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    studies = list_studies(args)
    engine = load_engine(args.model, args)
    cfg = decode_config_from_args(engine, args)
    sink = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
    failed, cut, warned = 0, 0, []
    try:
        for study, gen, error in decode_studies(engine, cfg, studies, args.batch_size):
            if error is not None:
                failed += 1
                row = {"sample_id": study.sample_id, "error": error}
            else:
                stats = {**gen.stats(), "timing": "batch" if gen.batch_size > 1 else "study"}
                row = {"sample_id": study.sample_id, "report": gen.text, "stats": stats}
                cut += gen.stop == "length"
                row.update({"warnings": gen.warnings} if gen.warnings else {})
                warned.append(gen.warnings)
            sink.write(json.dumps(row, ensure_ascii=False) + "\n")
            sink.flush()
    finally:
        if sink is not sys.stdout:
            sink.close()
    from echocxr.decoding.notices import summarise

    print_warnings(summarise(warned) + ([truncation_warning(cfg.max_new_tokens, cut)] if cut else []),
                   "echocxr report")
    if failed:
        print(f"echocxr report: {failed} of {len(studies)} studies skipped (unreadable images)", file=sys.stderr)
    return 0
