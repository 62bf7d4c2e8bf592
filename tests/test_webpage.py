"""The web page in real headless Chromium (selenium + chromedriver): upload a phantom X-ray, watch it stream.

Skipped, with the reason, when Chromium or chromedriver is not installed (Debian: chromium chromium-driver).
Set ECHOCXR_SCREENSHOT_DIR to keep the screenshots it takes.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

from echocxr.backbones.loading import load_backbone
from echocxr.decoding.engine import ReportEngine
from echocxr.serving.app import ServerConfig, create_app
from echocxr.serving.server import BackgroundServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="headless browser test needs Debian packages chromium and chromium-driver")

PAGE_CHECK = Path(__file__).resolve().parents[1] / "scripts" / "page_check.py"


@pytest.fixture(scope="module")
def server(tiny_vl_dir):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    engine = ReportEngine(load_backbone(tiny_vl_dir))
    app = create_app(engine, engine.default_config(max_new_tokens=32), ServerConfig(model_name="tiny-vl"))
    with BackgroundServer(app) as srv:
        yield srv
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("page_check", PAGE_CHECK)
    page_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(page_check)
    drv = page_check.headless_chromium(tmp_path_factory.mktemp("chromium-profile"), window="1280,900")
    yield drv
    drv.quit()


def phantom_png(path: Path) -> Path:
    from echocxr.data.phantom import render_case, sample_case

    Image.fromarray(render_case(sample_case(3, 0), size=256)[0]).save(path)
    return path


def wait_for_report(drv, timeout: float = 120.0) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(drv, timeout).until(
        lambda d: d.find_element(By.ID, "status").get_attribute("data-state") in ("done", "error"))
    status = drv.find_element(By.ID, "status")
    assert status.get_attribute("data-state") == "done", drv.find_element(By.ID, "error").text
    return drv.find_element(By.ID, "report").text


def screenshot(drv, tmp_path: Path, name: str) -> Path:
    out_dir = Path(os.environ.get("ECHOCXR_SCREENSHOT_DIR", tmp_path))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    drv.execute_script("window.scrollTo(0, 0)")
    assert drv.save_screenshot(str(path))
    assert Image.open(path).size[0] > 0
    return path


@pytest.mark.parametrize("menu,fields", [
    ('option[value="multistep"]', {"decoder": "multistep"}),
    ("option[data-refine]", {"decoder": "onestep", "refine": "0.7"}),  # one-step, unsure tokens refined
], ids=["multistep", "refine"])
def test_upload_streams_a_report(server, browser, tmp_path, menu, fields):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    png = phantom_png(tmp_path / "phantom.png")
    browser.get(server.url + "/")
    assert "echocxr" in browser.title
    browser.find_element(By.ID, "file").send_keys(str(png))
    Select(browser.find_element(By.ID, "lang")).select_by_value("en")
    browser.find_element(By.CSS_SELECTOR, f"#decoder {menu}").click()
    browser.find_element(By.ID, "generate").click()
    shown = wait_for_report(browser)

    api = httpx.post(server.url + "/v1/reports", files=[("images", ("p.png", png.read_bytes(), "image/png"))],
                     data={"lang": "en", **fields}, timeout=60).json()
    if "refine" in fields:  # the menu's refinement really reached the decoder: more forwards than one-step
        plain = httpx.post(server.url + "/v1/reports", files=[("images", ("p.png", png.read_bytes(), "image/png"))],
                           data={"lang": "en", "decoder": "onestep"}, timeout=60).json()
        assert api["stats"]["forwards"] > plain["stats"]["forwards"]
    assert shown.strip() == api["report"].strip() != ""
    assert browser.find_element(By.ID, "stat-tokens").text == str(api["stats"]["tokens"])
    assert browser.find_element(By.ID, "stat-forwards").text == str(api["stats"]["forwards"])
    assert float(browser.find_element(By.ID, "stat-tpf").text) == pytest.approx(api["stats"]["tpf"], abs=0.01)
    assert browser.find_element(By.ID, "stat-latency").text.endswith("ms")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#report .block")) >= 2  # drawn block by block
    assert len(browser.find_elements(By.CSS_SELECTOR, "#previews img")) == 1
    assert not browser.find_element(By.ID, "token-row").is_displayed()  # no auth on this server
    screenshot(browser, tmp_path, "webpage-upload.png")


def test_example_in_chinese_and_replay_shows_masks(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.get(server.url + "/")
    WebDriverWait(browser, 20).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".example")) >= 3)
    browser.find_elements(By.CSS_SELECTOR, ".example")[1].click()
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "generate").is_enabled())
    Select(browser.find_element(By.ID, "lang")).select_by_value("zh")
    Select(browser.find_element(By.ID, "decoder")).select_by_value("multistep")
    browser.find_element(By.ID, "generate").click()
    assert wait_for_report(browser).strip()
    # replay draws the recorded steps slowly: masked positions (▒) and new tokens must appear on the way
    browser.find_element(By.ID, "replay").click()
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#report .tok.mask"))
    masks = browser.find_elements(By.CSS_SELECTOR, "#report .tok.mask")
    assert masks and masks[0].text == "▒"
    assert browser.find_elements(By.CSS_SELECTOR, "#report .tok.new")
    screenshot(browser, tmp_path, "webpage-replay.png")


def test_low_confidence_marks_follow_the_threshold_live(server, browser, tmp_path):
    """Marks (tint + underline, value in the tooltip) on tokens below the slider's threshold, re-marked without
    regenerating; streamed and unstreamed reports alike."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    png = phantom_png(tmp_path / "phantom.png")
    api = httpx.post(server.url + "/v1/reports", files=[("images", ("p.png", png.read_bytes(), "image/png"))],
                     data={"lang": "en"}, timeout=60).json()
    browser.get(server.url + "/")
    browser.find_element(By.ID, "file").send_keys(str(png))
    slider = browser.find_element(By.ID, "conf-threshold")
    assert slider.get_attribute("value") == "0.5"
    for streamed in (True, False):
        if browser.find_element(By.ID, "stream").is_selected() != streamed:
            browser.find_element(By.ID, "stream").click()
        browser.find_element(By.ID, "generate").click()
        assert wait_for_report(browser).strip() == api["report"].strip()
        pieces = browser.find_elements(By.CSS_SELECTOR, "#report .piece")
        assert [float(p.get_attribute("data-conf")) for p in pieces] == [p["confidence"] for p in api["pieces"]]

        slider.send_keys(Keys.END)  # threshold 1.0: every token below it is marked
        assert browser.find_element(By.ID, "conf-value").text == "1.00"
        marked = browser.find_elements(By.CSS_SELECTOR, "#report .low")
        assert len(marked) == sum(p["confidence"] < 1.0 for p in api["pieces"]) > 0
        style = browser.execute_script("const s = getComputedStyle(arguments[0]); "
                                       "return [s.textDecorationLine, s.backgroundColor]", marked[0])
        assert style[0] == "underline" and style[1] not in ("rgba(0, 0, 0, 0)", "transparent")  # not colour alone
        assert marked[0].get_attribute("title") == f"confidence {float(marked[0].get_attribute('data-conf')):.2f}"
        rows = browser.find_elements(By.CSS_SELECTOR, "#sentence-rows tr")
        assert len(rows) == len(api["sentences"]) > 0
        if streamed:
            screenshot(browser, tmp_path, "webpage-confidence.png")

        slider.send_keys(Keys.HOME)  # threshold 0.0: nothing is below it
        assert browser.find_element(By.ID, "conf-value").text == "0.00"
        assert not browser.find_elements(By.CSS_SELECTOR, "#report .low, #sentence-rows .low")
        assert pieces[0].is_displayed()  # the same elements: re-marked in place, not regenerated
