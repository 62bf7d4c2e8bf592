"""CLI verbs beyond single reports: batched reports, demo, train-flops."""

from __future__ import annotations

import json

import pytest

from echocxr.cli import main
from tests.conftest import random_image


def test_report_dir_writes_jsonl_and_skips_bad_images(tiny_vl_dir, tmp_path, capsys):
    d = tmp_path / "studies"
    d.mkdir()
    for i in range(3):
        random_image(i, 80, 80).save(d / f"s{i}.png")
    (d / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "r.jsonl"
    rc = main(["report", "--model", str(tiny_vl_dir), "--dir", str(d), "--out", str(out), "--batch-size", "2",
               "--max-new-tokens", "8"])
    assert rc == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(r["sample_id"] for r in rows) == ["broken", "s0", "s1", "s2"]
    assert [r for r in rows if r["sample_id"] == "broken"][0]["error"].startswith("cannot read image")
    assert all(r["stats"]["tokens"] == 8 and r["stats"]["forwards"] >= 2 for r in rows if "report" in r)
    assert "1 of 4 studies skipped" in capsys.readouterr().err


def test_report_manifest_batched_equals_single(tiny_vl_dir, tmp_path):
    from echocxr.data.manifest import Sample, save_manifest

    paths = []
    for i in range(3):
        p = tmp_path / f"im{i}.png"
        random_image(10 + i, 60 + 10 * i, 70).save(p)
        paths.append(p)
    save_manifest([Sample(f"id{i}", [str(p)], "f", "i") for i, p in enumerate(paths)], tmp_path / "m.json")
    out = tmp_path / "r.jsonl"
    assert main(["report", "--model", str(tiny_vl_dir), "--manifest", str(tmp_path / "m.json"), "--out", str(out),
                 "--max-new-tokens", "8", "--batch-size", "3"]) == 0
    batched = {r["sample_id"]: r["report"] for r in map(json.loads, out.read_text().splitlines())}
    for i, p in enumerate(paths):
        single = tmp_path / f"single{i}.jsonl"
        d = tmp_path / f"d{i}"
        d.mkdir()
        (d / p.name).write_bytes(p.read_bytes())
        assert main(["report", "--model", str(tiny_vl_dir), "--dir", str(d), "--out", str(single),
                     "--max-new-tokens", "8"]) == 0
        assert json.loads(single.read_text())["report"] == batched[f"id{i}"]


def test_demo_with_a_model_dir(tiny_vl_dir, capsys, tmp_path):
    img = tmp_path / "study.png"
    rc = main(["demo", "--model", str(tiny_vl_dir), "--case", "1", "--max-new-tokens", "8", "--json",
               "--save-image", str(img)])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["study"] == "CXR-Phantom seed 2026, case 1" and isinstance(out["true_findings"], list)
    assert out["tokens"] == 8 and img.is_file()


def test_demo_missing_model_is_a_one_line_error(tmp_path, capsys):
    assert main(["demo", "--model", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "no model at" in err and "Traceback" not in err


def test_train_flops_rad_cheaper_than_full(capsys):
    assert main(["bench", "train-flops", "--prompt-len", "1300", "--response-len", "120"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tokens_rad"] == 1300 + 2 * 120 and out["tokens_full"] == 2 * (1300 + 120)
    assert out["flops_rad"] < out["flops_full"] and 40 < out["flops_saving_pct"] < 80


def test_train_flops_measure_runs(capsys):
    assert main(["bench", "train-flops", "--prompt-len", "64", "--response-len", "16", "--measure",
                 "--repeats", "1"]) == 0
    m = json.loads(capsys.readouterr().out)["measured"]
    assert m["tokens_rad"] == 64 + 32 and m["tokens_full"] == 2 * (64 + 16) and m["step_s_rad"] > 0


@pytest.mark.parametrize("argv", [["bench", "train-flops", "--prompt-len", "0"]])
def test_bench_bad_input(argv, capsys):
    assert main(argv) == 2
    assert "must be positive" in capsys.readouterr().err


def test_data_convert_cli(tmp_path, capsys):
    from echocxr.data.manifest import load_manifest

    eval_dir = tmp_path / "eval"
    (eval_dir / "img").mkdir(parents=True)
    random_image(1, 40, 40).save(eval_dir / "img" / "a.png")
    records = [{"sample_id": "a", "images": ["img/a.png"], "ground_truth": {"findings": "Lungs clear.",
                                                                             "impression": "Normal."}},
               {"sample_id": "b", "images": ["img/missing.png"], "ground_truth": {"findings": "x", "impression": "y"}}]
    js = eval_dir / "test.json"
    js.write_text(json.dumps(records))
    out = tmp_path / "m" / "manifest.json"
    assert main(["data", "convert", "echo-json", str(js), "--out", str(out), "--option", f"image_root={eval_dir}"]) == 0
    text = capsys.readouterr().out
    assert "wrote 1 studies" in text and "warning" in text
    (s,) = load_manifest(out)
    assert s.sample_id == "a" and s.findings == "Lungs clear." and (eval_dir / "img" / "a.png").samefile(s.images[0])
    assert main(["data", "convert", "padchest", str(js), "--out", str(out)]) == 2
    assert main(["data", "convert", "echo-json", str(js), "--out", str(out), "--option", "oops"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_builtin_model_writes_a_one_step_report(capsys):
    """The README's first command: the shipped model decodes a phantom study one block per forward."""
    from echocxr.backbones.builtin import BUILTIN_MODEL_DIR
    from echocxr.backbones.settings import read_settings

    assert (BUILTIN_MODEL_DIR / "config.json").is_file(), "the built-in model must ship with the package"
    settings = read_settings(BUILTIN_MODEL_DIR)
    assert settings.block_length == 4 and settings.languages == ["en", "zh"] and settings.image_size == 112
    assert main(["demo", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["decoder"] == "onestep" and out["block_length"] == 4 and out["stop"] == "eos"
    assert out["report"].startswith("Findings:") and "Impression:" in out["report"]
    assert out["tpf"] > 3.5 and out["forwards"] * 4 >= out["tokens"]
    assert isinstance(out["findings_in_report"], list)
