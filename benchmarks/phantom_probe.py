"""Are CXR-Phantom findings visible? Train a small CNN probe on rendered phantoms, report held-out AUROC.

Run (CPU, one thread; about 15 minutes on a busy core. The committed result came from exactly this):
    python benchmarks/phantom_probe.py --out benchmarks/results/phantom_probe.json

Trains on 2,000 studies of seed 0 (frontal, 256 px rendered, 128 px seen by the CNN) and tests on
1,000 studies of seed 1. Writes per-label and per-finding-type AUROC, the macro means and the command.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
from dataclasses import fields
from pathlib import Path

from echocxr.data.phantom.probe import ProbeConfig, run_probe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = ProbeConfig()
    for f in fields(ProbeConfig):
        parser.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(defaults, f.name)),
                            default=getattr(defaults, f.name))
    parser.add_argument("--out", default="benchmarks/results/phantom_probe.json")
    args = parser.parse_args(argv)
    cfg = ProbeConfig(**{f.name: getattr(args, f.name) for f in fields(ProbeConfig)})

    import sklearn
    import torch

    result = run_probe(cfg)
    result = {
        "command": "python benchmarks/phantom_probe.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "scikit-learn": sklearn.__version__, "device": "cpu"},
        **result,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")

    print(f"macro AUROC over {result['labels_in_macro']} labels: {result['macro_auroc_labels']:.3f} "
          f"(min {result['min_label_auroc']:.3f}); over finding types: {result['macro_auroc_types']:.3f}")
    for name, row in result["per_type"].items():
        label_auc = row["mean_label_auroc"]
        print(f"  {name:22s} any={row['auroc_any']:.3f}  labels={label_auc if label_auc is None else round(label_auc, 3)}"
              f"  positives={row['positives']}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
