"""The web page end to end in a real headless Chromium (Debian's `chromium`, driven by
Playwright; never a downloaded browser), against `scripts/serve.py` on a free 127.0.0.1 port.

Demo: an upload shows the decision beside its file name and the X-ray with its map in the
viewer; a failed upload leaves no earlier result on screen (and before any upload nothing
is shown); wheel zoom, drag pan and window/level change the view; the threshold slider and
its reset; shortcuts; the layout at tablet width keeps the decision and the image above the
fold. Annotation: the name is set once, a candidate is picked with a key, a stroke is
undone with Ctrl+Z (the name stays) and redone, saves are confirmed on screen and land on
disk with the annotator, skip / previous / reopen from the job list, the finished screen,
the lung-review outcomes, and a blind Stage-I review (no model name, run folder or
"manual" on the page; the real source in annotations.jsonl). Screenshots go to a temp folder, or to
`$QATACOV_SCREENSHOTS` (how docs/images/webapp_*.png are made).

One server (demo + live annotation) and one browser for the module; review servers (no
model) for the lung outcomes and the blind review.
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

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_SEED = 20_211_123  # qatacov_jax.quickstart.SAMPLE_SEED, without importing training

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
DESKTOP = {"width": 1280, "height": 800}
TABLET = {"width": 820, "height": 1180}

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


def _start(argv: list, log_path: Path):
    port = _free_port()
    log = open(log_path, "w")  # noqa: SIM115 - closed by _stop
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, *map(str, [*argv, "--port", port])],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 300  # generous: a loaded 2-core machine compiles slowly
    while True:
        assert proc.poll() is None, log_path.read_text()
        assert time.time() < deadline, "server did not start: " + log_path.read_text()
        try:
            urllib.request.urlopen(url + "api/config", timeout=2).read()
            return proc, log, url
        except OSError:
            time.sleep(0.2)


def _stop(proc, log, log_path: Path) -> None:
    proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
    try:
        assert proc.wait(30) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Demo (+ lung model) and live annotation (two candidates) of three X-rays."""
    base = tmp_path_factory.mktemp("webapp_browser")
    xrays = base / "xrays"
    for i in range(3):  # synthetic COVID-19 CXRs the models never saw
        ex = synthetic.generate(SAMPLE_SEED, i, SIZE, positive_fraction=1.0)
        write_xray(xrays / f"case_{i}.png", ex.image)
    a = write_tiny_run(base / "unet_stage1", seed=1)
    b = write_tiny_run(base / "unetpp_stage1", seed=3)
    lung = write_tiny_run(base / "lung", image_size=16, seed=2)
    argv = ["--checkpoint", a, "--lung-checkpoint", lung, "--candidates", a, "--candidates", b]
    # --batch-size 2: two compiled bucket sizes per model instead of four (test start-up).
    argv += ["--annotate", xrays, "--annotations", base / "accepted", "--batch-size", 2]
    proc, log, url = _start(argv, base / "server.log")
    yield {"url": url, "xrays": xrays, "out": base / "accepted"}
    _stop(proc, log, base / "server.log")


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


def _page(browser, url: str, viewport=DESKTOP):
    page = browser.new_page(viewport=viewport)
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_selector("body[data-config=ready]")
    return page, errors


def _shot(page, path: Path) -> None:
    """A screenshot once the viewer has drawn its next frame."""
    page.evaluate("() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))")
    page.screenshot(path=str(path))


def _centre_pixel(page, canvas: str) -> list[int]:
    """RGB of the on-screen canvas's centre pixel (after the next frame is drawn)."""
    return page.evaluate(
        """async (sel) => {
          await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
          const c = document.querySelector(sel);
          const d = c.getContext('2d').getImageData(c.width >> 1, c.height >> 1, 1, 1).data;
          return [d[0], d[1], d[2]]; }""",
        canvas,
    )


def _view(page, obj: str) -> dict:
    return page.evaluate(
        f"() => {{ const v = {obj}.viewer; return {{scale: v.scale, tx: v.tx, ty: v.ty, "
        "c: v.window.c, w: v.window.w}; }"
    )


def _upload(page, path: Path) -> None:
    page.set_input_files("#file", str(path))
    page.wait_for_selector("body[data-demo=ready], body[data-demo=error]")


# ------------------------------------------------------------------ demo


def test_demo_result_viewer_and_stale_result_clearing(server, browser, shots, tmp_path):
    page, errors = _page(browser, server["url"])
    # Before any upload: no result panel, no broken images, no downloads to click.
    for sel in ("#result", "#decision", "#dl-map", "#dl-report"):
        assert not page.is_visible(sel), sel
    _upload(page, server["xrays"] / "case_0.png")
    assert page.get_attribute("body", "data-demo") == "ready"
    decision = page.text_content("#decision")
    assert decision in ("COVID-19 detected", "No COVID-19 detected")
    assert (decision == "COVID-19 detected") == (float(page.text_content("#max-prob")) >= 0.5)
    assert page.text_content("#file-name") == "case_0.png"
    assert "grade" in page.text_content("#severity")
    assert "step 1" in page.text_content("#model-line")
    assert page.get_attribute("#dl-report", "download") == "case_0_report.json"
    assert sum(_centre_pixel(page, "#demo-canvas")) > 0
    _shot(page, shots / "webapp_demo.png")

    # Wheel zooms at the pointer, a drag pans, a right-drag changes window/level.
    box = page.locator("#demo-canvas").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    v0 = _view(page, "Demo")
    page.mouse.move(cx, cy)
    page.mouse.wheel(0, -400)
    v1 = _view(page, "Demo")
    assert v1["scale"] > v0["scale"] * 1.5
    page.mouse.down()
    page.mouse.move(cx + 60, cy + 30, steps=3)
    page.mouse.up()
    v2 = _view(page, "Demo")
    assert v2["tx"] > v1["tx"] + 50 and v2["ty"] > v1["ty"] + 20 and v2["scale"] == v1["scale"]
    before = _centre_pixel(page, "#demo-canvas")
    page.mouse.down(button="right")
    page.mouse.move(cx - 80, cy + 60, steps=3)  # narrower window, higher level: darker
    page.mouse.up(button="right")
    v3 = _view(page, "Demo")
    assert v3["w"] < v2["w"] and v3["c"] > v2["c"]
    assert page.input_value("[data-view=window] >> nth=0") == "custom"
    assert _centre_pixel(page, "#demo-canvas") != before
    page.select_option("[data-view=window] >> nth=0", "full")
    assert _view(page, "Demo")["w"] == 1.0
    page.keyboard.press("f")  # fit again
    assert _view(page, "Demo")["scale"] == pytest.approx(v0["scale"])
    page.keyboard.press("o")  # overlay off and on again
    assert page.get_attribute("body", "data-overlay") == "off"
    page.keyboard.press("o")
    assert page.get_attribute("body", "data-overlay") == "map"

    # The threshold slider re-thresholds; Reset returns to the validated operating point.
    pct = page.text_content("#pct-image")
    page.focus("#threshold")
    page.keyboard.press("Home")
    page.wait_for_selector("body[data-threshold='0.01']")
    assert page.text_content("#pct-image") != pct
    assert "not the validated 0.50" in page.text_content("#decision")
    page.click("#threshold-reset")
    page.wait_for_selector("body[data-threshold='0.50']")
    assert page.text_content("#pct-image") == pct

    # A failed upload clears the previous result: nothing of case_0 stays under the error.
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    _upload(page, bad)
    assert page.get_attribute("body", "data-demo") == "error"
    error = page.text_content("#error")
    assert "notes.png" in error and "not PNG, JPEG" in error
    assert "/tmp" not in error and "Error" not in error
    for sel in ("#result", "#decision", "#max-prob", "#dl-map"):
        assert not page.is_visible(sel), sel
    assert "notes.png could not be analysed" in page.text_content("#demo-empty")
    assert page.evaluate("() => Demo.viewer.grey") is None
    assert errors == []
    page.close()


def test_demo_tablet_layout(server, browser, shots):
    page, errors = _page(browser, server["url"], TABLET)
    _upload(page, server["xrays"] / "case_1.png")
    _shot(page, shots / "webapp_demo_tablet.png")
    decision = page.locator("#decision").bounding_box()
    canvas = page.locator("#demo-canvas").bounding_box()
    # Decision and image both above the fold, side by side.
    assert decision["y"] + decision["height"] < TABLET["height"]
    assert canvas["y"] < 200 and canvas["y"] + canvas["height"] <= TABLET["height"]
    assert canvas["x"] > decision["x"] + decision["width"] - 1
    assert canvas["width"] > 450
    assert errors == []
    page.close()


# ------------------------------------------------------------------ annotation


def _stroke(page, fy: float, fx0: float = 0.1, fx1: float = 0.9) -> None:
    """A horizontal brush stroke across the shown image at height `fy` (fractions of it)."""
    box = page.evaluate(
        """() => { const v = Annotate.viewer, r = v.canvas.getBoundingClientRect();
          const d = v.canvas.width / r.width;
          return {x: r.left + v.tx / d, y: r.top + v.ty / d,
                  w: v.w * v.scale / d, h: v.h * v.scale / d}; }"""
    )
    y = box["y"] + box["h"] * fy
    page.mouse.move(box["x"] + box["w"] * fx0, y)
    page.mouse.down()
    for f in np.linspace(fx0, fx1, 5)[1:]:
        page.mouse.move(box["x"] + box["w"] * f, y)
    page.mouse.up()


def _state(page) -> dict:
    return page.evaluate(
        """() => { const s = Annotate.state, e = s.edit; return {key: s.key, chosen: e.chosen,
          strokes: e.strokes, undo: e.undo.length,
          same: e.chosen ? e.mask.every((v, i) => v === s.cands.find((c) => c.name === e.chosen).bits[i]) : null}; }"""
    )


def _wait_key(page, key: str) -> None:
    page.wait_for_selector(f"body[data-key='{key}'][data-annotate=ready]")


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "annotations.jsonl").read_text().splitlines()]


def test_annotate_undo_save_skip_previous_reopen_finish(server, browser, shots):
    page, errors = _page(browser, server["url"] + "#annotate")
    page.wait_for_selector("body[data-annotate=who]")
    page.fill("#annotator", "Dr. Test")
    page.press("#annotator", "Enter")
    _wait_key(page, "xrays__case_0")
    assert page.text_content("#who-name") == "Dr. Test" and not page.is_visible("#annotator")
    names = page.eval_on_selector_all(".cand", "cs => cs.map(c => c.dataset.name)")
    assert names == ["unet_stage1", "unetpp_stage1", "consensus"]
    labels = page.eval_on_selector_all(".cand .show", "bs => bs.map(b => b.textContent)")
    assert all("tiny test model · fold 0" in t for t in labels[:2]), labels
    assert page.get_attribute(".cand .use >> nth=1", "aria-label").startswith("Start from ")

    page.keyboard.press("2")  # start from the second candidate
    assert _state(page)["chosen"] == "unetpp_stage1"
    page.keyboard.press("Shift+Digit1")  # hide candidate 1's outline on the canvas
    assert page.get_attribute(".cand .show >> nth=0", "aria-pressed") == "false"
    _stroke(page, 0.1)
    s = _state(page)
    assert s["strokes"] == 1 and not s["same"] and "corrected" in page.text_content("#save")
    _shot(page, shots / "webapp_annotate.png")

    # Ctrl+Z takes the stroke back (not the name); Ctrl+Shift+Z brings it again.
    page.keyboard.press("Control+z")
    s = _state(page)
    assert s["strokes"] == 0 and s["same"] and s["chosen"] == "unetpp_stage1"
    assert page.text_content("#who-name") == "Dr. Test"
    page.keyboard.press("Control+Shift+z")
    assert _state(page)["strokes"] == 1
    page.keyboard.press("]")  # a larger brush
    assert page.input_value("#brush-size") == "14"

    page.keyboard.press("s")  # save: the corrected candidate; the next image opens
    page.wait_for_selector("body[data-saved='xrays__case_0']")
    _wait_key(page, "xrays__case_1")
    saved = page.text_content("#ann-saved")
    assert "Saved case_0.png: corrected candidate 2" in saved
    rec = _records(server["out"])[-1]
    assert rec["key"] == "xrays__case_0" and rec["outcome"] == "correct"
    assert rec["annotator"] == "Dr. Test" and rec["seconds"] > 0
    mask = next(server["out"].rglob("mask_xrays__case_0.png"))
    row = (np.asarray(Image.open(mask)) > 0)[int(SIZE * 0.1)]
    assert row[int(SIZE * 0.15) : int(SIZE * 0.85)].all(), "the stroke is in the saved mask"

    page.keyboard.press("n")  # skip case_1: decide later
    _wait_key(page, "xrays__case_2")
    assert page.text_content("#ann-saved") == saved  # the confirmation stays readable
    page.keyboard.press("ArrowLeft")  # previous: back to the skipped image
    _wait_key(page, "xrays__case_1")

    # "No visible infection" asks first; Cancel saves nothing.
    page.click("[data-outcome=no_infection]")
    page.wait_for_selector("#ask[open]")
    page.click("#ask-cancel")
    assert len(_records(server["out"])) == 2  # the correction and the skip
    page.click("[data-outcome=no_infection]")
    page.click("#ask-ok")
    _wait_key(page, "xrays__case_2")
    assert _records(server["out"])[-1]["outcome"] == "no_infection"

    # Reopen case_0 from the job list; edits ask before another image replaces them.
    page.click("#jobs-box summary")
    page.click("#jobs-done button[data-key='xrays__case_0']")
    _wait_key(page, "xrays__case_0")
    assert "Your decision: corrected candidate 2" in page.text_content("#ann-mine")
    _stroke(page, 0.5)
    page.click("#jobs-todo button[data-key='xrays__case_2']")
    page.wait_for_selector("#ask[open]")
    page.click("#ask-cancel")
    assert _state(page)["key"] == "xrays__case_0" and _state(page)["strokes"] == 1
    page.click("#jobs-todo button[data-key='xrays__case_2']")
    page.click("#ask-ok")
    _wait_key(page, "xrays__case_2")

    # Draw by hand on the last image; then nothing is left: the finished screen.
    _stroke(page, 0.6)
    assert "my drawing" in page.text_content("#save")
    page.click("#save")
    page.wait_for_selector("body[data-annotate=done]")
    assert page.is_visible("#ann-finished")
    assert "3 of 3 images are settled" in page.text_content("#ann-finished-text")
    assert _records(server["out"])[-1]["outcome"] == "draw"
    assert errors == []
    page.close()


def test_annotate_tablet_layout(server, browser, shots):
    page, errors = _page(browser, server["url"] + "#annotate", TABLET)
    page.fill("#annotator", "Dr. Tablet")
    page.press("#annotator", "Enter")
    page.wait_for_selector("body[data-annotate=ready], body[data-annotate=done]")
    if page.get_attribute("body", "data-annotate") == "done":  # settled by the test above
        page.click("#jobs-done button >> nth=0")
        page.wait_for_selector("body[data-annotate=ready]")
    page.keyboard.press("1")
    _shot(page, shots / "webapp_annotate_tablet.png")
    save = page.locator("#save").bounding_box()
    canvas = page.locator("#ann-canvas").bounding_box()
    assert save["y"] + save["height"] < TABLET["height"] and canvas["width"] > 450
    assert canvas["y"] + canvas["height"] <= TABLET["height"]
    assert errors == []
    page.close()


@pytest.fixture(scope="module")
def lung_review(tmp_path_factory):
    """A review server (no model) over a lung candidate store of two images."""
    from annotation_utils import write_candidate_store

    base = tmp_path_factory.mktemp("webapp_lung_review")
    write_candidate_store(base / "candidates", ["a", "b"], ["unet", "fpn"], target="lung")
    argv = ["--review", base / "candidates", "--annotations", base / "out"]
    proc, log, url = _start(argv, base / "server.log")
    yield {"url": url, "out": base / "out"}
    _stop(proc, log, base / "server.log")


def test_lung_review_offers_accept_reject_unsure_exclude(lung_review, browser):
    page, errors = _page(browser, lung_review["url"])
    assert not page.is_visible("#tab-demo")  # no model: no demo
    page.fill("#annotator", "Dr. Lung")
    page.press("#annotator", "Enter")
    page.wait_for_selector("body[data-annotate=ready]")
    for outcome, shown in (("unsure", True), ("exclude", True), ("no_infection", False)):
        assert page.is_visible(f"[data-outcome={outcome}]") == shown, outcome
    page.keyboard.press("1")
    assert page.text_content("#save").startswith("Accept candidate 1")
    _stroke(page, 0.5)
    assert page.text_content("#save").startswith("Reject candidate 1, save my correction")
    page.keyboard.press("Control+z")
    page.keyboard.press("s")
    page.wait_for_selector("body[data-saved]")
    rec = _records(lung_review["out"])[-1]
    assert rec["outcome"] == "accept" and rec["chosen"] == "unet"
    assert errors == []
    page.close()


@pytest.fixture(scope="module")
def blind_review(tmp_path_factory):
    """A blind review server (no model) over a Stage-I store of two 40x48 images, three
    models and the doctors' masks as a reference (tests/test_annotation_api.py's store)."""
    from annotation_utils import write_stage1

    base = tmp_path_factory.mktemp("webapp_blind_review")
    cands, manual, masks, manual_masks = write_stage1(base, ["covid_1", "covid_2"])
    argv = ["--review", cands, "--annotations", base / "out", "--reference", manual, "--blind"]
    proc, log, url = _start(argv, base / "server.log")
    yield {"url": url, "out": base / "out", "base": base, "masks": masks, "manual": manual_masks}
    _stop(proc, log, base / "server.log")


def test_blind_review_names_no_model_and_records_the_truth(blind_review, browser):
    from annotation_utils import MODELS, decode

    url, out = blind_review["url"], blind_review["out"]
    page, errors = _page(browser, url)
    page.fill("#annotator", "Dr. Blind")
    page.press("#annotator", "Enter")
    _wait_key(page, "covid_1")
    names = page.eval_on_selector_all(".cand", "cs => cs.map(c => c.dataset.name)")
    assert names == ["candidate A", "candidate B", "candidate C", "candidate D"]  # 3 + manual
    seen = [page.locator("body").inner_text(), page.text_content("body")]
    seen.append(page.locator("#candidates").aria_snapshot())  # the buttons' accessible names
    secrets = [*MODELS, "manual", "Reference mask", "runs/", "fold_", str(blind_review["base"])]
    for text in seen:
        for secret in secrets:
            assert secret not in text, (secret, text[:300])
    assert "Start from candidate A (key 1)" in seen[2]

    page.keyboard.press("1")  # start from the first candidate, as it is
    assert _state(page)["chosen"] == "candidate A" and _state(page)["same"]
    assert page.text_content("#save") == "Save: candidate A as is (S)"
    page.keyboard.press("s")
    page.wait_for_selector("body[data-saved='covid_1']")
    _wait_key(page, "covid_2")  # the next image opens
    assert "Saved covid_1.png: picked candidate A as is" in page.text_content("#ann-saved")
    assert "candidate A" in page.eval_on_selector_all(".cand", "cs => cs.map(c => c.dataset.name)")
    assert errors == []
    page.close()

    # The API shows the blind label; the server's own record keeps the real source, the
    # one whose mask was shown as candidate A.
    q = "api/annotate/covid_1?annotator=Dr.%20Blind"
    item = json.loads(urllib.request.urlopen(url + q, timeout=30).read())
    assert item["mine"]["outcome"] == "pick" and item["mine"]["candidate"] == "candidate A"
    shown = decode(next(c["mask"] for c in item["candidates"] if c["name"] == "candidate A")) > 0
    truth = {**blind_review["masks"]["covid_1"], "manual": blind_review["manual"]["covid_1"]}
    sources = [name for name, mask in truth.items() if np.array_equal(mask, shown)]
    (rec,) = _records(out)
    assert rec["key"] == "covid_1" and rec["outcome"] == "pick" and rec["annotator"] == "Dr. Blind"
    assert rec["chosen"] in sources, (rec["chosen"], sources)
    assert sorted(rec["candidates"]) == sorted([*MODELS, "manual"])


# ------------------------------------------------------------------ from an ONNX export


def test_demo_from_an_onnx_export_names_it_and_how_to_add_a_lung_model(browser, shots, tmp_path):
    """`serve.py --model EXPORT_DIR`: the page labels the model an ONNX export and, with no
    lung model in the export, says to re-export with one (not a --lung-checkpoint flag the
    export server does not take)."""
    from qatacov_jax.export import export_run

    run = write_tiny_run(tmp_path / "run", seed=1)
    export_run(run, tmp_path / "onnx", fmt="onnx")
    xray = tmp_path / "case.png"
    write_xray(xray, synthetic.generate(SAMPLE_SEED, 0, SIZE, positive_fraction=1.0).image)
    proc, log, url = _start(["--model", tmp_path / "onnx"], tmp_path / "server.log")
    try:
        page, errors = _page(browser, url)
        _upload(page, xray)
        assert page.get_attribute("body", "data-demo") == "ready"
        assert "ONNX export" in page.text_content("#model-line")
        assert page.is_visible("#no-lung-export") and not page.is_visible("#no-lung")
        assert "--lung-checkpoint LUNG_RUN --format onnx" in page.text_content("#no-lung-export")
        _shot(page, shots / "webapp_demo_onnx.png")
        assert errors == []
    finally:
        _stop(proc, log, tmp_path / "server.log")
