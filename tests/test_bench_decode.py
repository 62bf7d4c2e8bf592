"""Smoke run of `echocxr bench decode`: every row runs and the fast rows give the reference tokens (never speed)."""

from __future__ import annotations

import json

from echocxr.cli import main


def test_bench_decode_builtin_smoke(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "decode", "--shape", "builtin", "--batch-sizes", "1,2", "--new-tokens", "8",
                 "--block-lengths", "4", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert {(r["decoder"], r["path"]) for r in rows} == {
        ("ar", "transformers"), ("ar", "reference"), ("ar", "fast"), ("multistep-b4", "reference"),
        ("onestep-vanilla-b4", "reference"), ("onestep-fused-b4", "reference"), ("onestep-fused-b4", "fast")}
    assert {r["batch_size"] for r in rows} == {1, 2}
    for r in rows:
        assert set(r) >= {"decoder", "path", "batch_size", "tps", "tps_with_prefill", "tpf", "ms_per_forward",
                          "peak_mem_mb", "identical_to_reference"}
        assert r["tokens"] == r["batch_size"] * 8  # EOS ignored: every sample decodes new_tokens
        if r["path"] == "fast" or r["decoder"].startswith("onestep-vanilla"):
            assert r["identical_to_reference"] is True
    assert {r["tpf"] for r in rows if r["decoder"].startswith("onestep")} == {4.0}
    assert result["environment"]["shape"] == "builtin"
    table = out.with_suffix(".md").read_text()
    assert "x best AR" in table and "onestep-fused-b4 | fast" in table
    assert "x best AR" in capsys.readouterr().out


def test_bench_decode_bad_input_is_one_line(capsys):
    assert main(["bench", "decode", "--shape", "13b"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown shape" in err and len(err.splitlines()) == 1
    assert main(["bench", "decode", "--batch-sizes", "1,x"]) == 2
    assert "--batch-sizes" in capsys.readouterr().err
    assert main(["bench", "decode", "--device", "tpu"]) == 2
    assert "unknown device" in capsys.readouterr().err
