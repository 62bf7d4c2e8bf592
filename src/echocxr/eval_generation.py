"""Report generation for `echocxr eval --model`: decode a manifest's studies and record speed stats."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from echocxr.data.manifest import Sample


def generate_predictions(args: argparse.Namespace, samples: list[Sample]) -> Iterator[dict]:
    """Yield {"sample_id", "report", "stats"} per sample; unreadable images give an empty report, counted."""
    import sys
    import warnings

    from echocxr.decoding.options import decode_config_from_options, load_engine
    from echocxr.decoding.studies import Study, decode_studies

    engine = load_engine(args.model, args)
    cfg = decode_config_from_options(engine, args)
    device, dtype = str(engine.device), str(engine.bb.dtype).replace("torch.", "")
    bs = max(1, int(getattr(args, "gen_batch_size", 1) or 1))
    studies = [Study(s.sample_id, list(s.images) if engine.is_vision else [],
                     getattr(args, "lang", None) or s.language) for s in samples]
    bad, warned = 0, []
    for study, gen, error in decode_studies(engine, cfg, studies, bs, desc="generate"):
        if error is not None:
            bad += 1
            yield {"sample_id": study.sample_id, "report": "", "stats": None, "error": error}
        else:
            warned.append(gen.warnings)
            yield {"sample_id": study.sample_id, "report": gen.text,
                   "stats": {**gen.stats(), "device": device, "dtype": dtype}}
    from echocxr.decoding.notices import summarise

    for line in summarise(warned):
        print(f"echocxr eval: warning: {line}", file=sys.stderr)
    if bad:
        warnings.warn(f"{bad} studies had unreadable images and got an empty report", stacklevel=2)
