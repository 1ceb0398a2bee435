"""The web app end to end in a real headless Chromium (Debian's `chromium`, driven by
Playwright; never a downloaded browser), against the server on a free 127.0.0.1 port.

The server is `scripts/serve.py`'s main in a subprocess (its runs load as the tiny test
model). Demo: upload an X-ray, wait for the map, check the decision text and that the
rendered map has pixels, move the threshold slider and check the mask and area change.
Annotation: pick a candidate, paint a stroke, save, and check the files on disk. Screenshots go to a temp
folder, or to `$QATACOV_SCREENSHOTS` (how docs/images/webapp_*.png are made).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from webapp_fixtures import write_tiny_run, write_xray

from qatacov_jax.data import synthetic
from qatacov_jax.quickstart import SAMPLE_SEED
from qatacov_jax.webapp.annotation import DATASET_DIR, PROVENANCE

ROOT = Path(__file__).resolve().parents[1]

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
TIMEOUT_MS = 60_000

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# scripts/serve.py's main in a subprocess (the run directories' configs select the tiny model).
SERVE = """import sys
from qatacov_jax.cli.serve import main
sys.exit(main(sys.argv[1:]))
"""
SIZE = 128  # side of the X-rays served


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The CLI serving demo (+ lung model) and annotation mode (two candidates) on a free
    127.0.0.1 port, in its own process as a user would start it."""
    base = tmp_path_factory.mktemp("webapp_browser")
    xrays = base / "xrays"
    for i in range(2):  # synthetic COVID-19 CXRs the models never saw
        ex = synthetic.generate(SAMPLE_SEED, i, SIZE, positive_fraction=1.0)
        write_xray(xrays / f"case_{i}.png", ex.image)
    a = write_tiny_run(base / "unet_stage1", seed=1)
    b = write_tiny_run(base / "unetpp_stage1", seed=3)
    lung = write_tiny_run(base / "lung", image_size=16, seed=2)
    argv = ["--checkpoint", a, "--lung-checkpoint", lung, "--candidates", a, "--candidates", b]
    port = _free_port()
    # --batch-size 2: two compiled bucket sizes per model instead of four (test start-up).
    argv += ["--annotate", xrays, "--annotations", base / "accepted", "--port", port]
    argv += ["--batch-size", 2]
    log = open(base / "server.log", "w")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, *map(str, argv)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while True:
        assert proc.poll() is None, (base / "server.log").read_text()
        assert time.time() < deadline, "server did not start: " + (base / "server.log").read_text()
        try:
            urllib.request.urlopen(url + "api/config", timeout=2).read()
            break
        except OSError:
            time.sleep(0.2)
    yield {"url": url, "xrays": xrays, "out": base / "accepted"}
    proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
    try:
        assert proc.wait(30) == 0, (base / "server.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's Chromium with "
            "`apt-get update && apt-get install -y chromium` (README command 2 does); "
            "never `playwright install`."
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    d = Path(os.environ.get("QATACOV_SCREENSHOTS") or tmp_path)
    d.mkdir(parents=True, exist_ok=True)
    return d


def _canvas_sum(page, selector: str) -> int:
    """Sum of the RGB values an <img> or <canvas> shows (drawn into a scratch canvas)."""
    return page.evaluate(
        """(sel) => {
          const el = document.querySelector(sel);
          const w = el.naturalWidth || el.width, h = el.naturalHeight || el.height;
          const c = document.createElement('canvas'); c.width = w; c.height = h;
          const ctx = c.getContext('2d'); ctx.drawImage(el, 0, 0);
          const d = ctx.getImageData(0, 0, w, h).data; let s = 0;
          for (let i = 0; i < d.length; i += 4) s += d[i] + d[i + 1] + d[i + 2];
          return s; }""",
        selector,
    )


def test_demo_upload_map_decision_and_slider(server, browser, shots, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 760})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(server["url"])
    page.wait_for_selector("body[data-config=ready]")
    xray = server["xrays"] / "case_0.png"
    page.set_input_files("#file", str(xray))
    page.wait_for_selector("body[data-demo=ready]")
    decision = page.text_content("#decision")
    assert decision in ("COVID-19 detected", "No COVID-19 detected")
    max_p = float(page.text_content("#max-prob"))
    assert (decision == "COVID-19 detected") == (max_p >= 0.5)
    grade = page.text_content("#severity").split(" (grade ")[0]
    assert grade in ("none", "mild", "moderate", "severe", "critical", "unknown")
    assert _canvas_sum(page, "#map") > 0
    mask_before, pct_before = _canvas_sum(page, "#mask"), page.text_content("#pct-image")
    page.screenshot(path=str(shots / "webapp_demo.png"))

    page.focus("#threshold")
    page.keyboard.press("Home")  # the slider to its lowest threshold: more pixels infected
    page.wait_for_selector("body[data-threshold='0.01']")
    assert _canvas_sum(page, "#mask") > mask_before
    assert page.text_content("#pct-image") != pct_before
    assert page.text_content("#decision") == "COVID-19 detected"  # max p >= 0.01

    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("body[data-demo=error]")
    assert "notes.png" in page.text_content("#error")
    page.close()


def test_annotate_pick_paint_save(server, browser, shots):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(server["url"] + "#annotate")
    page.wait_for_selector("body[data-annotate=ready]")
    key = "xrays__case_0"
    names = page.eval_on_selector_all(".card", "cs => cs.map(c => c.dataset.name)")
    assert len(names) == 4 and names[2:] == ["consensus", "disagreement"]
    pick = names[1]  # the second model
    page.fill("#annotator", "Dr. Test")
    page.click(f".card[data-name='{pick}'] .pick")
    page.wait_for_selector(f".card.chosen[data-name='{pick}']")
    box = page.locator("#ed-mask").bounding_box()
    # A horizontal stroke across the top fifth of the image with the brush.
    y = box["y"] + box["height"] * 0.1
    page.mouse.move(box["x"] + box["width"] * 0.1, y)
    page.mouse.down()
    for f in (0.3, 0.5, 0.7, 0.9):
        page.mouse.move(box["x"] + box["width"] * f, y)
    page.mouse.up()
    page.screenshot(path=str(shots / "webapp_annotate.png"))
    page.click("#save")
    page.wait_for_selector(f"body[data-saved='{key}']")
    page.wait_for_selector("body[data-annotate=ready]")  # the next X-ray is up

    root = server["out"] / DATASET_DIR
    mask = np.asarray(Image.open(root / "Ground-truths" / f"mask_{key}.png")) > 0
    assert mask.shape == (SIZE, SIZE)
    row = mask[int(SIZE * 0.1)]
    assert row[int(SIZE * 0.15) : int(SIZE * 0.85)].all(), "the stroke is in the saved mask"
    assert (root / "Images" / f"{key}.png").is_file()
    rec = json.loads((server["out"] / PROVENANCE).read_text().splitlines()[-1])
    assert rec["key"] == key and rec["chosen"] == pick
    assert rec["annotator"] == "Dr. Test" and rec["seconds"] > 0
    assert 0 <= rec["dice_chosen_vs_final"] < 1  # the stroke changed the candidate
    page.close()
