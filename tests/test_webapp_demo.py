"""The demo's answers beyond infer.py's report (`webapp.routes.demo`): the same X-ray as an
8-bit PNG and as a 12-bit DICOM gets the same decision; errors say what is wrong with the
file, never a server path or exception name; a picture that does not look like a chest
X-ray gets no confident decision; the model is named by what it is, with its step.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from data_fakes import write_dicom_pixels
from fastapi.testclient import TestClient
from PIL import Image
from webapp_fixtures import write_tiny_run, xray

from qatacov_jax.webapp import images
from qatacov_jax.webapp.app import Settings, create_app
from qatacov_jax.webapp.engine import load_engine
from qatacov_jax.webapp.plausibility import input_warnings


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    base = tmp_path_factory.mktemp("webapp_demo")
    engine = load_engine(write_tiny_run(base / "unet_a", seed=1), batch_size=1)
    yield TestClient(create_app(engine, Settings()))
    engine.close()


def _png(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def _decode(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def test_png_and_its_12_bit_dicom_get_the_same_decision(client, tmp_path):
    x8 = xray(64, 56, seed=3)
    dcm = tmp_path / "same.dcm"
    # The same pixels x 16 in a 12-bit DICOM without a VOI LUT or window.
    write_dicom_pixels(dcm, x8.astype(np.uint16) * 16, "MONOCHROME2")
    import pydicom

    ds = pydicom.dcmread(dcm)
    ds.PatientID, ds.StudyDate, ds.AccessionNumber = "P-0042", "20240131", "A-7"
    ds.save_as(dcm, enforce_file_format=True)
    a = client.post("/api/predict", files={"file": ("same.png", _png(x8))}).json()
    b = client.post("/api/predict", files={"file": ("same.dcm", dcm.read_bytes())}).json()
    assert a["covid19"] == b["covid19"] and a["decision"] == b["decision"]
    assert a["max_probability"] == pytest.approx(b["max_probability"], abs=0.01)
    # What the model saw within one grey level, so the probability maps agree as closely.
    diff = np.abs(_decode(a["xray"]).astype(int) - _decode(b["xray"]).astype(int))
    assert diff.max() <= 1
    pa, pb = (
        images.decode_probability(base64.b64decode(r["probability"].split(",", 1)[1]))
        for r in (a, b)
    )
    assert np.abs(pa - pb).max() <= 1 / 255
    assert b["intensity"] == "DICOM MONOCHROME2, 12 bits stored, no VOI window: values / 4095"
    assert a["intensity"] == "8-bit: values / 255"
    assert b["dicom"] == {
        "patient_id": "P-0042",
        "study_date": "20240131",
        "accession_number": "A-7",
    }
    assert a["dicom"] == {} and "xray16" in b and "xray16" not in a
    x16 = images.decode_probability(base64.b64decode(b["xray16"].split(",", 1)[1]))
    np.testing.assert_allclose(x16, x8.astype(np.float64) * 16 / 4095, atol=1 / 65535)


@pytest.mark.parametrize(
    "payload, words",
    [
        (b"these are not pixels", "the file is not PNG, JPEG, BMP, TIFF or DICOM data"),
        (_png(xray(48, 40, 0))[:300], "truncated or corrupt"),
    ],
)
def test_errors_say_what_is_wrong_without_paths_or_exception_names(client, payload, words):
    r = client.post("/api/predict", files={"file": ("scan.png", payload)})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err.startswith("scan.png: not a readable chest X-ray image: ") and words in err
    for leak in ("/tmp", "qatacov_upload", "upload'", "Error", "Exception", "PIL"):
        assert leak not in err, err


def test_not_a_chest_xray_gets_no_decision(client):
    rng = np.random.default_rng(0)
    noise = _png((rng.random((96, 96, 3)) * 255).astype(np.uint8), "JPEG")
    r = client.post("/api/predict", files={"file": ("noise.jpg", noise)}).json()
    assert r["decision"] == "not assessed: the upload does not look like a chest X-ray"
    assert any("colour" in w for w in r["warnings"])
    assert any("noise" in w for w in r["warnings"])
    ok = client.post("/api/predict", files={"file": ("ok.png", _png(xray(64, 56, 1)))}).json()
    assert ok["warnings"] == [] and ok["decision"] in ("COVID-19 detected", "No COVID-19 detected")


def test_warnings_spare_radiographs_and_flag_blank_and_odd_shapes():
    assert input_warnings(xray(128, 112, 2) / 255.0) == []
    # A grey X-ray saved as a colour JPEG keeps a little chroma: not "in colour".
    assert input_warnings(xray(128, 112, 2) / 255.0, colour_fraction=0.01) == []
    assert "nearly uniform" in input_warnings(np.full((64, 64), 0.4))[0]
    assert "unusual shape" in input_warnings(xray(40, 120, 2) / 255.0)[0]


def test_model_named_by_architecture_with_its_step(client):
    cfg = client.get("/api/config").json()
    info = cfg["models"]["infection"]
    assert info["step"] == 1 and info["score"] == 0.5 and info["fold"] == 0
    assert (
        info["label"]
        == "tiny test model · fold 0 · best checkpoint, step 1 · validation Dice 0.500"
    )
    assert "unet_a" not in info["label"]  # the folder's name says nothing reliable
    r = client.post("/api/predict", files={"file": ("x.png", _png(xray(48, 40, 0)))}).json()
    assert r["model"] == info["label"] and r["checkpoint_step"] == 1
    assert r["analysed_at"].endswith("Z") and "lung_model" not in r
