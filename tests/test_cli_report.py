"""`echocxr report` as a user runs it: JSON output, and one-line errors with a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import random_image


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "echocxr.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("img") / "cxr.png"
    random_image(5, 120, 100).save(p)
    return p


@pytest.mark.parametrize("decoder", ["ar", "multistep", "onestep"])
def test_report_json(tiny_vl_dir, image_file, decoder):
    r = run_cli("report", "--model", str(tiny_vl_dir), "--image", str(image_file), str(image_file),
                "--decoder", decoder, "--block-length", "4", "--steps", "2", "--max-new-tokens", "12", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for key in ("report", "tokens", "forwards", "tpf", "prefill_s", "decode_s"):
        assert key in out
    assert out["decoder"] == decoder and out["forwards"] >= 1 and out["tokens"] >= 1
    assert_confidence_fields(out)


def assert_confidence_fields(out: dict) -> None:
    """Token confidence: pieces that concatenate to the report, each sentence's mean and lowest confidence."""
    assert "".join(p["text"] for p in out["pieces"]) == out["report"] != ""
    assert all(0 < p["confidence"] <= 1 for p in out["pieces"])
    assert out["sentences"]
    for st in out["sentences"]:
        assert out["report"][st["start"]:st["end"]] == st["text"]
        assert 0 < st["min_confidence"] <= st["mean_confidence"] <= 1
    assert min(st["min_confidence"] for st in out["sentences"]) >= min(p["confidence"] for p in out["pieces"])


def test_report_json_confidence_in_process(tiny_vl_dir, image_file, capsys):
    """The same fields without a subprocess (seconds): the fast path's decode, as `report` runs it."""
    from echocxr.cli import main

    assert main(["report", "--model", str(tiny_vl_dir), "--image", str(image_file), "--decoder", "multistep",
                 "--block-length", "4", "--steps", "2", "--max-new-tokens", "12", "--json"]) == 0
    assert_confidence_fields(json.loads(capsys.readouterr().out))


@pytest.mark.parametrize("args,needle", [
    (["--model", "/nonexistent/model"], "model directory not found"),
    (["--image", "/nonexistent.png"], "image not found"),
    (["--image", "BAD"], "cannot read image"),
    (["--decoder", "multistep", "--steps", "9", "--block-length", "4"], "steps must be"),
    (["--lang", "fr"], "invalid choice"),
    (["--decoder", "ar", "--refine", "0.5"], "--refine applies to the one-step decoder"),
    (["--tie-ratio", "0.5", "--temperature", "1"], "greedy decoding only"),
])
def test_report_errors_are_one_line(tiny_vl_dir, image_file, tmp_path, args, needle):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not an image")
    base = {"--model": str(tiny_vl_dir), "--image": str(image_file)}
    argv = ["report"]
    for k, v in base.items():
        if k not in args:
            argv += [k, v]
    argv += [str(bad) if a == "BAD" else a for a in args]
    r = run_cli(*argv)
    assert r.returncode != 0
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len([ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("usage")]) <= 2
