"""What a model was trained for (echocxr.json): resizing to its image size, `--model builtin`, multistep
defaults on one-step models, warnings for decoders/languages/images outside its training, the model card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from echocxr.backbones.settings import ModelSettings, read_settings
from echocxr.cli import main
from echocxr.errors import UserError
from tests.conftest import random_image

FIT = dict(block_length=4, prefill="response_aligned", decoder="onestep", steps=1, stage="dcd", image_size=56,
           languages=["en"], decoders=["onestep"], domain="cxr-phantom")


def phantom(size: int, index: int = 0, seed: int = 7, view: str = "frontal") -> Image.Image:
    from echocxr.data.phantom import render_case, sample_case

    return Image.fromarray(render_case(sample_case(seed, index), size, (view,))[0]).convert("RGB")


@pytest.fixture(scope="module")
def fitted_dir(tiny_vl_dir, tmp_path_factory):
    """The tiny VL model, as a phantom-trained one-step model that was trained at 56 px, English only."""
    d = tmp_path_factory.mktemp("fitted") / "model"
    shutil.copytree(tiny_vl_dir, d)
    ModelSettings(**FIT).save(d)
    return d


@pytest.fixture(scope="module")
def fitted_engine(fitted_dir):
    from echocxr.backbones.loading import load_backbone
    from echocxr.decoding.engine import ReportEngine

    return ReportEngine(load_backbone(fitted_dir))


# ---- settings -------------------------------------------------------------------------------------------
def test_old_settings_files_load_with_anything_goes_defaults(tmp_path):
    (tmp_path / "echocxr.json").write_text(json.dumps({"block_length": 4, "decoder": "onestep", "steps": 1,
                                                       "stage": "dcd", "some_future_field": 3}))
    s = read_settings(tmp_path)
    assert (s.image_size, s.languages, s.decoders, s.domain) == (0, [], [], "")
    assert s.decoder_warning("ar") is None and s.language_warning("zh") is None


def test_settings_round_trip_and_bad_fields_are_one_line_errors(tmp_path):
    ModelSettings(**FIT).save(tmp_path)
    assert read_settings(tmp_path) == ModelSettings(**FIT)
    for bad in ({"decoders": ["fast"]}, {"languages": "en"}, {"image_size": -1}, {"domain": "mri"}):
        (tmp_path / "echocxr.json").write_text(json.dumps({**FIT, **bad}))
        with pytest.raises(UserError) as exc:
            read_settings(tmp_path)
        assert "\n" not in str(exc.value) and "echocxr.json" in str(exc.value)


def test_multistep_defaults_of_one_step_and_multistep_models():
    off = {"lookahead": 0, "lookahead_threshold": 0.1}
    assert ModelSettings(steps=1).multistep_defaults(8) == {
        "steps": 8, "remasking": "low_confidence_dynamic", "threshold": 0.9, **off}
    assert ModelSettings(steps=3, remasking="sequential", threshold=0.7).multistep_defaults(8) == {
        "steps": 3, "remasking": "sequential", "threshold": 0.7, **off}
    assert ModelSettings(steps=8, remasking="low_entropy_dynamic", lookahead=2).multistep_defaults(8)["lookahead"] == 2
    assert ModelSettings(steps=6).multistep_defaults(4)["steps"] == 4


def test_stage_settings_record_what_each_stage_was_trained_for(tmp_path):
    from echocxr.training.config import load_config
    from echocxr.training.stages import StageRequest, stage_settings

    cfg = load_config("dcd", "phantom-demo")
    recipe = StageRequest("dcd", cfg, tmp_path / "out", languages=("en", "zh"))
    data = tmp_path / "phantoms"
    data.mkdir()
    (data / "phantom.json").write_text(json.dumps({"image_size": 96}))
    s = stage_settings("dcd", cfg, recipe, data)
    assert (s.decoders, s.languages, s.image_size, s.domain) == (["onestep"], ["en", "zh"], 128, "cxr-phantom")
    assert stage_settings("ar", cfg, recipe, data).decoders == ["ar"]
    assert stage_settings("rad", cfg, recipe, data).decoders == ["multistep", "onestep"]
    dp = stage_settings("dparallel", cfg, recipe, data)  # a baseline decodes as its paper does by default
    assert (dp.decoder, dp.decoders, dp.remasking, dp.steps) == ("multistep", ["multistep", "onestep"],
                                                                 "low_entropy_dynamic", cfg.block_length)
    # --data: the recipe's phantom size says nothing about it; a phantom set says its own size
    given = StageRequest("dcd", cfg, tmp_path / "out", data_dir=data)
    assert (stage_settings("dcd", cfg, given, data).image_size, stage_settings("dcd", cfg, given, data).domain) == (
        96, "cxr-phantom")
    real = tmp_path / "real"
    real.mkdir()
    s = stage_settings("dcd", cfg, StageRequest("dcd", cfg, tmp_path / "out", data_dir=real), real)
    assert (s.image_size, s.domain, s.languages) == (0, "", ["en"])
    cfg.image_size = 160  # the trainer's future field wins
    assert stage_settings("dcd", cfg, recipe, data).image_size == 160


# ---- model card --------------------------------------------------------------------------------------------
def test_model_card_is_written_from_the_settings_and_shown_by_demo(fitted_dir, tmp_path, capsys):
    from echocxr.backbones.card import read_model_card, write_model_card

    d = tmp_path / "m"
    shutil.copytree(fitted_dir, d)
    assert main(["demo", "--model", str(d), "--card"]) == 2  # no card yet: one line
    assert "no model card" in capsys.readouterr().err
    write_model_card(d, "Tiny", "A test model.", "CXR-Phantom, 10 studies.", "phantom-tiny",
                     metrics={"en": {"F1 micro": 90.0, "report_validity": 99.5}, "zh": {"F1 micro": 88.25}},
                     limits=["Tiny."], sections={"Command": "`make model`"})
    card = read_model_card(d)
    assert "- languages: en" in card and "56 x 56 px" in card and "onestep" in card
    assert "| F1 micro | 90.00 | 88.25 |" in card and "| report_validity | 99.50 | – |" in card
    assert "not for clinical use" in card and "- Tiny." in card and "## Command" in card
    assert main(["demo", "--model", str(d), "--card"]) == 0
    assert capsys.readouterr().out.startswith("# Tiny")


def test_builtin_model_has_a_card_and_settings():
    from echocxr.backbones.builtin import BUILTIN_MODEL_DIR
    from echocxr.backbones.card import read_model_card

    s = read_settings(BUILTIN_MODEL_DIR)
    assert s.image_size > 0 and s.domain == "cxr-phantom" and s.languages and s.decoders
    assert "not for clinical use" in (read_model_card(BUILTIN_MODEL_DIR) or "")


# ---- --model builtin -------------------------------------------------------------------------------------
def test_builtin_names_the_packaged_model_everywhere(tmp_path, capsys):
    from echocxr.backbones.builtin import BUILTIN_MODEL_DIR, model_dir_or_builtin, resolve_model_dir
    from echocxr.backbones.loading import load_backbone

    assert resolve_model_dir("builtin") == model_dir_or_builtin(None) == str(BUILTIN_MODEL_DIR)
    assert resolve_model_dir("runs/x") == "runs/x"
    assert load_backbone("builtin").path == str(BUILTIN_MODEL_DIR)  # bench, train --from: via load_backbone
    img = tmp_path / "p.png"
    phantom(128, 4, 2026).save(img)
    assert main(["report", "--model", "builtin", "--image", str(img), "--json", "--max-new-tokens", "16"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == str(BUILTIN_MODEL_DIR) and out["warnings"] == []


# ---- resizing ------------------------------------------------------------------------------------------------
def test_fit_to_size_keeps_the_area_of_the_training_square():
    from echocxr.backbones.prompt import fit_to_size

    assert fit_to_size(random_image(0, 384, 384), 128).size == (128, 128)
    assert fit_to_size(random_image(0, 40, 40), 128).size == (128, 128)
    w, h = fit_to_size(random_image(0, 300, 600), 128).size
    assert abs(w * h - 128 * 128) < 400 and abs(w / h - 2) < 0.05  # random_image(seed, h, w)
    im = random_image(0, 90, 70)
    assert fit_to_size(im, 0) is im


def test_engine_feeds_views_at_the_models_image_size(fitted_engine, tiny_vl_dir):
    from echocxr.backbones.loading import load_backbone
    from echocxr.backbones.prompt import fit_to_size
    from echocxr.decoding.engine import ReportEngine

    big = phantom(384)
    p = fitted_engine.encode([big])
    assert p.image_grid_thw.tolist() == [[1, 4, 4]]  # 56 px = 4x4 patches of 14
    same = fitted_engine.encode([fit_to_size(big, 56)])
    assert p.pixel_values.equal(same.pixel_values)
    plain = ReportEngine(load_backbone(tiny_vl_dir))  # no image_size: the processor's own resize
    assert plain.encode([big]).image_grid_thw.tolist() != [[1, 4, 4]]


def test_report_dir_resizes_like_a_single_prerezised_image(fitted_dir, tmp_path):
    from echocxr.backbones.prompt import fit_to_size

    d = tmp_path / "d"
    d.mkdir()
    phantom(384, 3).save(d / "big.png")
    small = tmp_path / "small.png"
    fit_to_size(phantom(384, 3), 56).save(small)
    out = tmp_path / "r.jsonl"
    assert main(["report", "--model", str(fitted_dir), "--dir", str(d), "--out", str(out),
                 "--max-new-tokens", "8"]) == 0
    one = tmp_path / "one.jsonl"
    assert main(["report", "--model", str(fitted_dir), "--manifest", _manifest(tmp_path, small), "--out", str(one),
                 "--max-new-tokens", "8"]) == 0
    assert json.loads(out.read_text())["report"] == json.loads(one.read_text())["report"]


def _manifest(tmp_path: Path, image: Path) -> str:
    from echocxr.data.manifest import Sample, save_manifest

    save_manifest([Sample("s", [str(image)], "f", "i")], tmp_path / "m.json")
    return str(tmp_path / "m.json")


# ---- multistep on a one-step model ------------------------------------------------------------------------
def test_multistep_on_a_one_step_model_runs_several_steps(fitted_engine):
    cfg = fitted_engine.default_config(decoder="multistep")
    assert (cfg.steps, cfg.remasking, cfg.threshold) == (4, "low_confidence_dynamic", 0.9)
    assert fitted_engine.default_config(decoder="multistep", steps=2, threshold=0.5).steps == 2
    assert fitted_engine.default_config(decoder="multistep", threshold=0.5).threshold == 0.5
    assert fitted_engine.default_config(decoder="multistep", block_length=2).steps == 2
    assert fitted_engine.default_config().steps_per_block == 1
    prompt = fitted_engine.encode([phantom(56)])
    one = fitted_engine.generate([prompt], fitted_engine.default_config(max_new_tokens=16))[0]
    multi = fitted_engine.generate([prompt], fitted_engine.default_config(decoder="multistep", threshold=1.0,
                                                                          max_new_tokens=16))[0]
    assert one.forwards == 4 and multi.forwards == 16  # threshold 1: one token per step, L steps per block


def test_cli_multistep_takes_more_forwards_than_onestep(fitted_dir, capsys):
    args = ["demo", "--model", str(fitted_dir), "--json", "--max-new-tokens", "16", "--threshold", "1.0"]
    assert main(args + ["--decoder", "multistep"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["forwards"] == 16 and out["decoder"] == "multistep"


# ---- warnings ---------------------------------------------------------------------------------------------------
def test_decoder_and_language_outside_training_warn_once_on_stderr(fitted_dir, tmp_path, capsys):
    img = tmp_path / "p.png"
    phantom(56).save(img)
    base = ["report", "--model", str(fitted_dir), "--image", str(img), "--max-new-tokens", "8"]
    def warnings_beyond_the_token_limit() -> list[str]:  # 8 tokens: the report is cut, and says so
        return [x for x in capsys.readouterr().err.splitlines() if x and "stopped at the token limit" not in x]

    assert main(base) == 0
    assert warnings_beyond_the_token_limit() == []
    assert main(base + ["--decoder", "ar", "--lang", "zh"]) == 0
    err = warnings_beyond_the_token_limit()
    assert len(err) == 2 and all(x.startswith("echocxr: warning: ") for x in err)
    assert "not ar" in err[0] and "'zh'" in err[1]


def test_batch_warnings_are_summarised(fitted_dir, tmp_path, capsys):
    d = tmp_path / "d"
    d.mkdir()
    phantom(56, 0).save(d / "a.png")
    random_image(1, 64, 64).save(d / "b.png")
    assert main(["report", "--model", str(fitted_dir), "--dir", str(d), "--out", str(tmp_path / "r.jsonl"),
                 "--max-new-tokens", "8", "--decoder", "multistep"]) == 0
    err = capsys.readouterr().err
    assert err.count("not multistep") == 1 and "out of domain" in err and "[1 of 2]" in err
    rows = {r["sample_id"]: r for r in map(json.loads, (tmp_path / "r.jsonl").read_text().splitlines())}
    assert len(rows["b"]["warnings"]) == 2 and len(rows["a"]["warnings"]) == 1


def test_domain_notice_only_for_phantom_models(fitted_engine, tiny_vl_dir):
    from echocxr.backbones.loading import load_backbone
    from echocxr.decoding.engine import ReportEngine

    noise = random_image(3, 64, 64)
    assert fitted_engine.encode([phantom(128)]).notices == []
    (notice,) = fitted_engine.encode([phantom(128), noise]).notices
    assert notice.startswith("out of domain") and "view 2:" in notice
    assert ReportEngine(load_backbone(tiny_vl_dir)).encode([noise]).notices == []


# ---- the CXR-Phantom check ---------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [48, 64, 112, 128, 256, 384, 512])
@pytest.mark.parametrize("view", ["frontal", "lateral"])
def test_phantoms_pass_at_every_size_and_after_jpeg(size, view):
    from io import BytesIO

    from echocxr.data.phantom.domain import phantom_mismatch

    for index in range(6 if size <= 256 else 2):
        im = phantom(size, index, seed=11, view=view)
        assert phantom_mismatch(im) is None, (size, view, index)
        buf = BytesIO()
        im.save(buf, format="JPEG", quality=50)
        assert phantom_mismatch(Image.open(buf)) is None


def _photo(n: int = 256) -> np.ndarray:
    """A made-up outdoor photo: sky gradient, sun, hills and grass texture."""
    rng = np.random.default_rng(0)
    v, u = np.mgrid[0:n, 0:n] / n
    img = np.zeros((n, n, 3))
    img[...] = np.stack([90 + 80 * v, 150 + 60 * v, 250 - 20 * v], axis=-1)
    sun = np.hypot(u - 0.75, v - 0.2) < 0.08
    img[sun] = (255, 240, 180)
    ground = v > 0.6 + 0.08 * np.sin(u * 9)
    img[ground] = np.stack([40 + 30 * rng.random(ground.sum()), 120 + 60 * rng.random(ground.sum()),
                            40 + 20 * rng.random(ground.sum())], axis=-1)
    return img.clip(0, 255).astype(np.uint8)


def _non_phantoms() -> dict[str, Image.Image]:
    n = 256
    rng = np.random.default_rng(1)
    v, u = np.mgrid[0:n, 0:n] / n
    grey = {
        "grey noise": rng.integers(0, 256, (n, n)),
        "horizontal gradient": 255 * u,
        "vertical gradient": 255 * v,
        "radial vignette": np.clip(255 * (1 - np.hypot(u - 0.5, v - 0.5) / 0.6), 0, 255),
        "black": np.zeros((n, n)),
        "white": np.full((n, n), 255),
        "dark-top gradient with noise": np.clip(255 * v ** 0.5 + rng.normal(0, 8, (n, n)), 0, 255),
        "inverted phantom": 255 - np.asarray(phantom(n, 0).convert("L")),
    }
    out = {k: Image.fromarray(a.astype(np.uint8), mode="L") for k, a in grey.items()}
    out["colour noise"] = Image.fromarray(rng.integers(0, 256, (n, n, 3), dtype=np.uint8))
    out["photo"] = Image.fromarray(_photo())
    out["grey photo"] = Image.fromarray(_photo()).convert("L")
    out["non-square phantom crop"] = phantom(n, 0).crop((0, 0, n, int(n * 0.8)))
    return out


@pytest.mark.parametrize("name", list(_non_phantoms()))
def test_non_phantom_images_are_flagged(name):
    from echocxr.data.phantom.domain import phantom_mismatch

    assert phantom_mismatch(_non_phantoms()[name]) is not None


def _one_property_broken() -> dict[str, Image.Image]:
    """Phantoms (or near-phantoms) that break exactly one checked property each."""
    p = np.asarray(phantom(128, 0))
    tinted = (p * np.array([1.0, 0.75, 0.5])).astype(np.uint8)
    corner = p.copy()
    corner[:16, -16:] = 200  # a burnt-in label in the top-right corner
    v = np.mgrid[0:128, 0:128][0] / 128
    return {"in colour": Image.fromarray(tinted), "no dark air in the top corners": Image.fromarray(corner),
            "no bright chest in the centre": Image.fromarray((p * 0.2).astype(np.uint8)),
            "no lung fields": Image.fromarray((255 * v).astype(np.uint8)),
            "not square": phantom(128, 0).crop((0, 0, 128, 100))}


@pytest.mark.parametrize("reason", list(_one_property_broken()))
def test_each_checked_property_is_needed(reason):
    from echocxr.data.phantom.domain import phantom_mismatch

    assert (phantom_mismatch(_one_property_broken()[reason]) or "").startswith(reason)


# ---- demo ---------------------------------------------------------------------------------------------------------
def test_demo_prints_truth_stated_findings_and_match(fitted_dir, capsys, monkeypatch):
    from echocxr.cli import demo

    ref = ("Findings: There are no support devices. The heart size is normal. The mediastinal and hilar contours "
           "are normal. No focal consolidation is seen. No pulmonary nodule or mass is seen. There is no "
           "atelectasis. No evidence of pulmonary edema. No evidence of pleural effusion. No evidence of "
           "pneumothorax. The bony thorax is intact. Impression: No acute cardiopulmonary process.")
    assert demo._report_validity(ref, "en").startswith("report validity: valid (11 of 11")
    broken = demo._report_validity(ref.replace("The heart size is normal.", "The heart size is normal normal."), "en")
    assert broken.startswith("report validity: not valid (10 of 11 sentences valid")
    assert main(["demo", "--model", str(fitted_dir), "--case", "1", "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert "truth : consolidation_right_lower\n" in out
    assert "findings stated in the report:" in out and ("[matches the truth]" in out or "[differs from" in out)
    assert "report validity: " in out


def test_demo_in_chinese_with_a_bilingual_model(fitted_dir, tmp_path, capsys):
    d = tmp_path / "bi"
    shutil.copytree(fitted_dir, d)
    ModelSettings(**{**FIT, "languages": ["en", "zh"]}).save(d)
    assert main(["demo", "--model", str(d), "--lang", "zh", "--json", "--max-new-tokens", "8"]) == 0
    cap = capsys.readouterr()
    out = json.loads(cap.out)
    assert out["warnings"] == [] and cap.err == "" and isinstance(out["findings_in_report"], list)
    assert main(["demo", "--model", str(fitted_dir), "--lang", "zh", "--json", "--max-new-tokens", "8"]) == 0
    assert "'zh'" in capsys.readouterr().err


def test_demo_renders_the_phantom_at_the_models_size(fitted_dir, tmp_path, capsys):
    img = tmp_path / "s.png"
    assert main(["demo", "--model", str(fitted_dir), "--json", "--max-new-tokens", "4", "--save-image", str(img)]) == 0
    capsys.readouterr()
    assert Image.open(img).size == (56, 56)


# ---- server -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted_server(fitted_engine):
    from echocxr.serving.app import ServerConfig, create_app
    from echocxr.serving.server import BackgroundServer

    app = create_app(fitted_engine, fitted_engine.default_config(max_new_tokens=16), ServerConfig(model_name="fit"))
    with BackgroundServer(app) as srv:
        yield srv


def _png(im: Image.Image) -> str:
    import base64
    from io import BytesIO

    buf = BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_server_multistep_warnings_and_resized_uploads(fitted_server):
    import httpx

    from echocxr.serving.examples import EXAMPLE_SIZE

    with httpx.Client(base_url=fitted_server.url, timeout=60) as c:
        health = c.get("/health").json()
        assert health["trained_decoders"] == ["onestep"] and health["image_size"] == 56
        ok = c.post("/v1/reports", json={"images": [_png(phantom(EXAMPLE_SIZE))]}).json()
        assert ok["warnings"] == [] and ok["stats"]["forwards"] == 4
        multi = c.post("/v1/reports", json={"images": [_png(phantom(56))], "decoder": "multistep",
                                            "threshold": 1.0}).json()
        assert ok["stats"]["prompt_tokens"] == multi["stats"]["prompt_tokens"]  # the 384 px example fed at 56 px
        assert multi["stats"]["forwards"] == 16 and "not multistep" in multi["warnings"][0]
        zh = c.post("/v1/reports", json={"images": [_png(random_image(0, 64, 64))], "lang": "zh"}).json()
        assert len(zh["warnings"]) == 2 and "out of domain" in zh["warnings"][1]
        with c.stream("POST", "/v1/reports/stream", json={"images": [_png(random_image(0, 64, 64))]}) as r:
            body = r.read().decode()
        done = json.loads(body.split("event: done\ndata: ")[1].split("\n")[0])
        assert "out of domain" in done["warnings"][0]


def test_web_page_shows_warnings_and_marks_untrained_options():
    from echocxr.serving.app import STATIC_DIR

    js = (STATIC_DIR / "app.js").read_text()
    assert 'id="warnings"' in (STATIC_DIR / "index.html").read_text()
    assert "showWarnings(ev.data.warnings" in js and "markUntrained($(\"decoder\"), health.trained_decoders)" in js


def test_eval_model_warns_about_non_phantom_images(fitted_dir, tmp_path, capsys):
    from echocxr.data.manifest import Sample, save_manifest

    a, b = tmp_path / "a.png", tmp_path / "b.png"
    phantom(56).save(a)
    random_image(2, 64, 64).save(b)
    save_manifest([Sample("a", [str(a)], "No finding.", "Normal."), Sample("b", [str(b)], "No finding.", "Normal.")],
                  tmp_path / "m.json")
    assert main(["eval", "--model", str(fitted_dir), "--manifest", str(tmp_path / "m.json"), "--out",
                 str(tmp_path / "ev"), "--metrics", "rouge_l", "--max-new-tokens", "8"]) == 0
    err = capsys.readouterr().err
    assert "echocxr eval: warning: out of domain" in err and "[1 of 2]" in err
