"""Make tests/data/ptb_golden.json.gz: what the Stanford PTBTokenizer (the jar of the `pycocoevalcap`
wheel, as `cidereval` runs it) gives on real and synthetic report texts. Needs Java and the jar:

    pip download --no-deps pycocoevalcap==1.2 && unzip -o pycocoevalcap-1.2-py3-none-any.whl 'pycocoevalcap/tokenizer/*'
    apt-get install default-jre-headless
    PYTHONPATH=src python scripts/golden/make_ptb_golden.py pycocoevalcap/tokenizer/stanford-corenlp-3.4.1.jar

IU X-ray texts are not copied into the golden file: their lines are rebuilt from torchxrayvision's
archive by the test, and only a hash of each line's tokens is stored.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.golden_texts import fuzz_lines, iu_cider_lines, phantom_cider_lines, token_hash  # noqa: E402

OUT = Path(__file__).resolve().parents[2] / "tests" / "data" / "ptb_golden.json.gz"


def run_jar(jar: str, lines: list[str]) -> list[str]:
    """One output line per input line, as `cidereval`'s PTBTokenizer wrapper runs the jar."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        f.write("\n".join(line.replace("\n", " ") for line in lines))
    cmd = ["java", "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase", f.name]
    out = subprocess.run(cmd, capture_output=True, check=True).stdout.decode("utf-8").split("\n")
    Path(f.name).unlink()
    return [line.rstrip() for line in out[: len(lines)]]


def main(jar: str) -> None:
    iu = iu_cider_lines()
    phantom = phantom_cider_lines()
    fuzz = fuzz_lines()
    golden = {
        "tool": "stanford-corenlp-3.4.1.jar from pycocoevalcap 1.2, PTBTokenizer -preserveLines -lowerCase",
        "iu": {"hyp": [token_hash(t) for t in run_jar(jar, iu["hyp"])],
               "ref": [token_hash(t) for t in run_jar(jar, iu["ref"])]},
        "phantom": {"hyp": {"lines": phantom["hyp"], "tokens": run_jar(jar, phantom["hyp"])},
                    "ref": {"lines": phantom["ref"], "tokens": run_jar(jar, phantom["ref"])}},
        "synthetic": {"lines": fuzz, "tokens": run_jar(jar, fuzz)},
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(OUT, "wt", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
