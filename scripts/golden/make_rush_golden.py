"""Make tests/data/rush_golden.json.gz: how the official RaTEScore sentence splitter (medspacy 1.3.1 with
PyRuSH, loaded as the official code loads it) cuts real and synthetic report texts. medspacy cannot be
installed beside this project's numpy, so run it from a separate environment:

    python3 -m venv /tmp/rushenv && /tmp/rushenv/bin/pip install medspacy==1.3.1
    PYTHONPATH=src python scripts/golden/make_rush_golden.py /tmp/rushenv/bin/python

Only character offsets of the kept sentences are stored for IU X-ray and synthetic texts (both are
rebuilt from torchxrayvision's archive by the test); CXR-Phantom texts are stored with their offsets.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.golden_texts import iu_rate_texts, phantom_rate_texts, synthetic_rate_texts  # noqa: E402

OUT = Path(__file__).resolve().parents[2] / "tests" / "data" / "rush_golden.json.gz"
SPLIT = r"""
import json, sys
from loguru import logger
logger.remove()
import medspacy
nlp = medspacy.load(medspacy_enable=["medspacy_pyrush", "medspacy_conte"])
out = []
for text in json.load(sys.stdin):
    kept = []
    for sent in nlp(text).sents:
        s = str(sent)
        st = s.strip()
        if len(st.split()) == 0 or len(st) < 3:
            continue
        b = sent.start_char + len(s) - len(s.lstrip())
        kept.append([b, b + len(st)])
    out.append(kept)
json.dump(out, sys.stdout)
"""


def run(python: str, texts: list[str]) -> list[list[list[int]]]:
    proc = subprocess.run([python, "-c", SPLIT], input=json.dumps(texts), capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def main(python: str) -> None:
    phantom = phantom_rate_texts()
    golden = {"tool": "medspacy 1.3.1 + PyRuSH 1.0.13, medspacy.load(medspacy_enable=['medspacy_pyrush', ...])",
              "iu": run(python, iu_rate_texts()),
              "phantom": {"texts": phantom, "sentences": run(python, phantom)},
              "synthetic": run(python, synthetic_rate_texts())}
    with gzip.open(OUT, "wt", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
