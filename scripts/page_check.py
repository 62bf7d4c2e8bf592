"""Check the web page as a user sees it: `echocxr serve` with a model (default the built-in one), headless
Chromium clicks each example study, generates its report in English and Chinese with each decoder of the menu,
and this records what the page showed (report, TPF, findings stated against the example's truth, grammar
validity) beside a screenshot of every case.

    .venv/bin/python scripts/page_check.py [--model builtin] [--out DIR] [--decoders "" multistep]

Writes DIR/page_check.json and DIR/<example>-<lang>-<decoder>.png. Needs Debian's chromium and chromium-driver,
and a CJK font for readable Chinese screenshots (e.g. fonts-wqy-zenhei; the reports are read from the page either way).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

CHROME_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, port: int) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("echocxr")
    proc = subprocess.Popen([str(exe), "serve", "--model", model, "--port", str(port), "--log-level", "warning"])
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"echocxr serve exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    proc.terminate()
    raise SystemExit("echocxr serve did not answer within 5 minutes")


def headless_chromium(profile: Path, window: str = "1280,1100"):
    """Selenium's Chrome driver on Debian's chromium (tests/test_webpage.py opens its browser here too)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        raise SystemExit("needs chromium and chromedriver (Debian: chromium chromium-driver)")
    opts = Options()
    opts.binary_location = chromium
    for flag in (*CHROME_FLAGS, f"--window-size={window}"):
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={profile}")
    drv = webdriver.Chrome(service=Service(executable_path=driver), options=opts)
    drv.set_page_load_timeout(120)  # upper bounds: a busy shared machine starves the renderer
    return drv


def check_case(drv, url: str, index: int, lang: str, decoder: str) -> dict:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    drv.get(url + "/")
    WebDriverWait(drv, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".example")) > index)
    drv.find_elements(By.CSS_SELECTOR, ".example")[index].click()
    WebDriverWait(drv, 60).until(lambda d: d.find_element(By.ID, "generate").is_enabled())
    Select(drv.find_element(By.ID, "lang")).select_by_value(lang)
    Select(drv.find_element(By.ID, "decoder")).select_by_value(decoder)
    drv.find_element(By.ID, "generate").click()
    WebDriverWait(drv, 180).until(
        lambda d: d.find_element(By.ID, "status").get_attribute("data-state") in ("done", "error"))
    state = drv.find_element(By.ID, "status").get_attribute("data-state")
    return {"state": state, "report": drv.find_element(By.ID, "report").text.strip(),
            "tpf": drv.find_element(By.ID, "stat-tpf").text, "forwards": drv.find_element(By.ID, "stat-forwards").text,
            "model_info": drv.find_element(By.ID, "model-info").text}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--out", type=Path, default=Path("page_check"))
    ap.add_argument("--langs", nargs="+", default=["en", "zh"])
    ap.add_argument("--decoders", nargs="+", default=["", "multistep"], help='"" is the model default')
    args = ap.parse_args()

    from echocxr.data.labeler import label_report
    from echocxr.metrics.coherence import report_coherence

    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(args.model, port)
    rows = []
    try:
        examples = httpx.get(url + "/examples", timeout=30).json()["examples"]
        with tempfile.TemporaryDirectory() as profile:
            drv = headless_chromium(Path(profile))
            try:
                for i, ex in enumerate(examples):
                    truth = sorted(f.replace(" ", "_") for f in ex["findings"] if f != "no finding")
                    for lang in args.langs:
                        for decoder in args.decoders:
                            row = {"example": ex["name"], "lang": lang, "decoder": decoder or "model default",
                                   **check_case(drv, url, i, lang, decoder)}
                            stated = sorted(label_report(row["report"], lang))
                            try:
                                valid = report_coherence(row["report"], lang, "normalised").valid
                            except ValueError:
                                valid = False
                            row.update(truth=truth, stated=stated, findings_match=stated == truth, valid=valid)
                            shot = args.out / f"{ex['name']}-{lang}-{decoder or 'default'}.png"
                            drv.execute_script("window.scrollTo(0, 0)")
                            drv.save_screenshot(str(shot))
                            row["screenshot"] = shot.name
                            rows.append(row)
                            print(f"{ex['name']:24s} {lang} {row['decoder']:13s} valid={valid!s:5s} "
                                  f"match={row['findings_match']!s:5s} tpf={row['tpf']}", flush=True)
            finally:
                drv.quit()
    finally:
        server.terminate()
        server.wait(timeout=30)
    summary = {"model": args.model, "cases": len(rows), "valid": sum(r["valid"] for r in rows),
               "findings_match": sum(r["findings_match"] for r in rows), "rows": rows}
    (args.out / "page_check.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    print(f"{summary['valid']} of {len(rows)} valid, {summary['findings_match']} match the truth; "
          f"{args.out / 'page_check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
