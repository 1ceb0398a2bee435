"""The web app's API (`qatacov_jax.webapp`) through FastAPI's TestClient.

`/api/predict` must report what `scripts/infer.py` reports for the same file and run
(same field names and values, the same infection map pixels); bad uploads get 4xx JSON
errors naming the problem while the server keeps serving; annotation saves land in the
QaTa-COV19 layout the TFDS builder reads, with provenance, survive a restart, and two
annotators saving the same image get a 409 instead of a silently lost mask (live annotation;
reviewing a candidate store: tests/test_annotation_api.py).
"""

from __future__ import annotations

import base64
import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from data_fakes import write_dicom
from fastapi.testclient import TestClient
from PIL import Image
from webapp_fixtures import write_tiny_run, write_xray

from qatacov_jax import data
from qatacov_jax.cli import serve as serve_cli
from qatacov_jax.inference.files import infer_files
from qatacov_jax.webapp import images
from qatacov_jax.webapp.annotation import (
    DATASET_DIR,
    PROVENANCE,
    AnnotationSession,
    LiveCandidates,
    blind_labels,
    dice,
)
from qatacov_jax.webapp.app import Settings, create_app, static_files
from qatacov_jax.webapp.engine import BatchQueue, load_engine

ROOT = Path(__file__).resolve().parents[1]
JSON_TYPE = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("webapp_runs")
    return {
        "infection": write_tiny_run(base / "infection", seed=1),
        "lung": write_tiny_run(base / "lung", image_size=16, seed=2),
        "cand_b": write_tiny_run(base / "cand_b", seed=3),
    }


@pytest.fixture(scope="module")
def engine(runs):
    eng = load_engine(
        runs["infection"],
        lung_checkpoint=runs["lung"],
        candidates=[runs["infection"], runs["cand_b"]],
        annotate=True,
        batch_size=4,
    )
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def client(engine):
    return TestClient(create_app(engine, Settings(max_upload_mb=0.05)))


def _png(h=48, w=40, seed=0) -> bytes:
    buf = io.BytesIO()
    from webapp_fixtures import xray

    Image.fromarray(xray(h, w, seed)).save(buf, format="PNG")
    return buf.getvalue()


def _decode(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def test_predict_reports_what_infer_py_reports(client, runs, tmp_path):
    src = write_xray(tmp_path / "in" / "case.png", 48, 40, seed=5)
    r = client.post("/api/predict", files={"file": ("../../etc/case.png", src.read_bytes())})
    assert r.status_code == 200, r.text
    got = r.json()
    rows = infer_files(runs["infection"], [src], tmp_path / "out", lung_checkpoint=runs["lung"])
    want = rows[0]
    assert want["status"] == "ok"
    for k in ("height", "width", "covid19", "severity_grade", "severity"):
        assert got[k] == want[k], k
    for k in (
        "max_probability",
        "infected_percent_of_image",
        "lung_percent_of_image",
        "infected_percent_of_lung",
    ):
        assert got[k] == pytest.approx(want[k], rel=1e-6, abs=1e-9), k
    assert set(want) <= set(got)  # every report.json field, under the same name
    assert got["file"] == "case.png"  # the client's path is display only
    # The same colouring and masks as the files infer.py writes.
    np.testing.assert_array_equal(_decode(got["map"]), np.asarray(Image.open(want["map"])))
    np.testing.assert_array_equal(_decode(got["mask"]), np.asarray(Image.open(want["mask"])))
    lung = np.asarray(Image.open(want["lung_mask"]))
    np.testing.assert_array_equal(_decode(got["lung_mask"]), lung)
    # The page re-thresholds from the 16-bit probabilities: at the server's threshold it
    # reproduces the server's mask (up to pixels within 1/65535 of the threshold).
    prob = images.decode_probability(base64.b64decode(got["probability"].split(",", 1)[1]))
    mask = _decode(got["mask"]) > 0
    assert np.mean((prob >= 0.5) != mask) < 1e-3
    assert 0 < mask.sum() < mask.size, "tiny model should give a partial mask"
    assert _decode(got["xray"]).shape == (48, 40)


def test_dicom_upload_and_concurrent_requests_group_into_fewer_calls(client, engine, tmp_path):
    write_dicom(tmp_path / "a.dcm", 40, 36)
    r = client.post("/api/predict", files={"file": ("a.dcm", (tmp_path / "a.dcm").read_bytes())})
    assert r.status_code == 200, r.text
    assert (r.json()["height"], r.json()["width"]) == (40, 36)

    calls0 = engine.infer.calls
    results = [None] * 6

    def post(i):
        results[i] = client.post("/api/predict", files={"file": ("x.png", _png(seed=i % 2))})

    threads = [threading.Thread(target=post, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.status_code == 200 for r in results)
    # Identical inputs give identical answers whatever batch they were grouped in.
    assert results[0].json()["max_probability"] == results[2].json()["max_probability"]
    assert results[1].json()["mask"] == results[3].json()["mask"]
    assert engine.infer.calls - calls0 <= 6


def test_batch_queue_groups_waiting_images():
    gate = threading.Event()
    sizes = []

    def predict_batch(imgs):
        gate.wait(5)
        sizes.append(len(imgs))
        return [{"infection": i * 2} for i in imgs]

    q = BatchQueue(predict_batch, batch_size=4, wait_ms=0)
    futs = [q.submit(np.full((2, 2), float(i))) for i in range(7)]
    gate.set()
    outs = [f.result(5) for f in futs]
    q.close()
    assert [float(o["infection"][0, 0]) for o in outs] == [2.0 * i for i in range(7)]
    assert sum(sizes) == 7 and max(sizes) <= 4 and len(sizes) <= 4


@pytest.mark.parametrize(
    "name,payload,status,words",
    [
        ("notes.png", b"these are not pixels", 422, "not a readable chest X-ray"),
        ("cut.png", None, 422, "not a readable"),
        ("empty.png", b"", 422, "empty"),
        ("big.png", b"\0" * 60_000, 413, "--max-upload-mb"),
        ("nopixels.dcm", "dicom", 415, "unsupported DICOM"),
    ],
)
def test_bad_uploads_are_clear_4xx_and_the_server_keeps_serving(
    client, tmp_path, name, payload, status, words
):
    if payload is None:
        payload = _png()[:200]  # a truncated PNG
    elif payload == "dicom":
        import pydicom

        write_dicom(tmp_path / "d.dcm")
        ds = pydicom.dcmread(tmp_path / "d.dcm")
        del ds.PixelData
        ds.save_as(tmp_path / "d.dcm", enforce_file_format=True)
        payload = (tmp_path / "d.dcm").read_bytes()
    r = client.post("/api/predict", files={"file": (name, payload)})
    assert r.status_code == status, r.text
    assert words in r.json()["error"]
    if status != 413:
        assert name in r.json()["error"]
    assert client.post("/api/predict", files={"file": ("ok.png", _png())}).status_code == 200


def test_missing_field_and_declared_oversize(client):
    r = client.post("/api/predict", data={"other": "x"})
    assert r.status_code == 422 and "file" in r.json()["error"]
    r = client.post(
        "/api/predict",
        content=b"x" * 10,
        headers={"content-length": str(10**9), "content-type": "multipart/form-data; boundary=b"},
    )
    assert r.status_code == 413 and "--max-upload-mb" in r.json()["error"]


def test_token_protects_the_api_and_non_local_binding_needs_one(engine, capsys):
    c = TestClient(create_app(engine, Settings(token="s3cret")))
    assert c.get("/api/config").status_code == 401
    assert c.get("/api/config", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert c.get("/api/config", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert c.get("/api/config", headers={"X-Token": "s3cret"}).status_code == 200
    # Refused before the body is read (and before annotation mode is looked at).
    r = c.post("/api/predict", files={"file": ("x.png", _png())})
    assert r.status_code == 401 and "token" in r.json()["error"]
    assert c.get("/api/annotate").status_code == 401
    assert c.get("/").status_code == 200  # the page itself holds no data
    code = serve_cli.main(["--checkpoint", "x", "--host", "0.0.0.0"])
    assert code == 2 and "--token" in capsys.readouterr().err
    code = serve_cli.main(["--checkpoint", "x", "--annotate", "imgs"])
    assert code == 2 and "--annotations" in capsys.readouterr().err
    code = serve_cli.main(["--checkpoint", "x", "--candidates", "y"])
    assert code == 2 and "--annotate" in capsys.readouterr().err
    code = serve_cli.main(["--checkpoint", "x", "--display-floor", "5"])
    assert code == 2 and "--display-floor must be in [0, 1)" in capsys.readouterr().err
    assert serve_cli.main(["--help"]) == 0


def test_second_server_on_an_annotations_folder_is_refused(tmp_path, capsys):
    """One server writes an annotations folder; a second one (another process in real life:
    the lock refuses a second writer in the same process too) is refused before loading."""
    from qatacov_jax.runtime.locking import run_dir_lock

    write_xray(tmp_path / "xrays" / "a.png")
    out = tmp_path / "annotations"
    argv = ["--checkpoint", str(tmp_path / "none"), "--annotate", str(tmp_path / "xrays")]
    with run_dir_lock(out, purpose="annotation server"):
        assert serve_cli.main([*argv, "--annotations", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "annotation server" in err


def test_page_assets_are_local_and_shipped(client):
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text
    names = {p.name for p in static_files()}
    assert {"index.html", "app.js", "style.css"} <= names
    for p in static_files():
        text = p.read_text()
        assert "http://" not in text and "https://" not in text, f"{p.name} loads a remote asset"
        assert client.get(f"/static/{p.name}").status_code == 200
    assert '"qatacov_jax.webapp" = ["static/*"]' in (ROOT / "pyproject.toml").read_text()


def test_openapi_documents_every_route_request_and_response(client):
    """/openapi.json (`webapp.schemas`): every /api/ route has its response schema, every
    POST its request body, and errors the one `{"error"}` shape."""
    from qatacov_jax.webapp.routes import annotation, demo

    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]

    def resolve(schema: dict) -> dict:
        return schemas[schema["$ref"].rsplit("/", 1)[1]] if "$ref" in schema else schema

    api = {
        (prefix + r.path, m.lower())
        for prefix, router in (("/api", demo.router), ("/api/annotate", annotation.router))
        for r in router.routes
        for m in r.methods
    }
    documented = {(p, m) for p, ops in spec["paths"].items() for m in ops}
    assert (
        api
        == documented
        == {
            ("/api/config", "get"),
            ("/api/predict", "post"),
            ("/api/annotate", "get"),
            ("/api/annotate/{key}", "get"),
            ("/api/annotate/{key}", "post"),
        }
    )
    for path, method in sorted(api):
        op = spec["paths"][path][method]
        where = f"{method.upper()} {path}"
        ok = resolve(op["responses"]["200"]["content"]["application/json"]["schema"])
        assert ok.get("properties"), f"{where}: no response schema"
        for status, resp in op["responses"].items():
            if status != "200":
                got = resp["content"]["application/json"]["schema"]
                assert got == {"$ref": "#/components/schemas/ErrorResponse"}, (where, status)
        assert "401" in op["responses"], f"{where}: the token check is not documented"
        if method == "post":
            body = op["requestBody"]["content"]
            (schema,) = [resolve(v["schema"]) for v in body.values()]
            assert schema.get("properties"), f"{where}: no request schema"
    predict = spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    assert "file" in resolve(predict["multipart/form-data"]["schema"])["required"]
    save = resolve(
        spec["paths"]["/api/annotate/{key}"]["post"]["requestBody"]["content"]["application/json"][
            "schema"
        ]
    )
    assert save["required"] == ["annotator"] and save["additionalProperties"] is False
    assert {
        "annotator",
        "outcome",
        "candidate",
        "mask",
        "revision",
        "seconds",
        "note",
        "adjudicate",
        "source",
        "no_infection",
    } == set(save["properties"])
    assert "lung_mask" not in resolve({"$ref": "#/components/schemas/PredictResponse"})["required"]
    assert "HTTPValidationError" not in schemas  # 422s are {"error"}, as documented


# ------------------------------------------------------------------ annotation mode


@pytest.fixture
def annotation_dirs(tmp_path):
    imgs = tmp_path / "xrays"
    write_xray(imgs / "a.png", 48, 40, seed=1)
    write_xray(imgs / "sub dir" / "b.png", 40, 48, seed=2)
    write_xray(imgs / "c.png", 32, 32, seed=3)
    return imgs, tmp_path / "accepted"


def _session(engine, imgs, out, **kw):
    source = LiveCandidates(imgs, engine.candidate_names, 0.5, engine.candidates.predict)
    return AnnotationSession(source, out, **kw)


def _annotate_client(engine, imgs, out, **settings):
    return TestClient(create_app(engine, Settings(**settings), _session(engine, imgs, out)))


def _mask_url(mask: np.ndarray) -> str:
    return images.data_url(images.png_bytes(np.where(mask, 255, 0).astype(np.uint8)))


def test_annotation_save_layout_provenance_and_restart(engine, annotation_dirs):
    imgs, out = annotation_dirs
    c = _annotate_client(engine, imgs, out)
    p = c.get("/api/annotate").json()
    assert {k: p[k] for k in ("total", "done", "pending", "next")} == {
        "total": 3,
        "done": 0,
        "pending": 3,
        "next": "xrays__a",
    }
    assert p["settings"]["mode"] == "live" and p["settings"]["stage"] is None
    item = c.get("/api/annotate/xrays__a").json()
    names = [x["name"] for x in item["candidates"]]
    assert names == ["infection", "cand_b", "consensus"]
    masks = {x["name"]: _decode(x["mask"]) > 0 for x in item["candidates"]}
    # Consensus of two models is their intersection; the stats are Dice with the others.
    np.testing.assert_array_equal(masks["consensus"], masks["infection"] & masks["cand_b"])
    d = dice(masks["infection"], masks["cand_b"])
    assert item["candidates"][0]["dice_with_models"] == pytest.approx(d)
    assert item["revision"] == 0 and item["height"] == 48 and item["width"] == 40
    assert item["candidates"][0]["probability"].startswith("data:image/png")

    final = masks["cand_b"].copy()
    final[:10, :10] = True  # the annotator's brush stroke
    # The earlier page's body (source + mask, no outcome) is a correction of cand_b.
    body = {
        "revision": 0,
        "source": "cand_b",
        "mask": _mask_url(final),
        "seconds": 12.5,
        "annotator": "Dr. A",
    }
    r = c.post("/api/annotate/xrays__a", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["saved"]["outcome"] == "correct" and r.json()["next"] == "xrays__c"
    root = out / DATASET_DIR
    saved = np.asarray(Image.open(root / "Ground-truths" / "mask_xrays__a.png")) > 0
    np.testing.assert_array_equal(saved, final)
    assert np.asarray(Image.open(root / "Images" / "xrays__a.png")).shape == (48, 40)
    # "No visible infection" keeps the X-ray a COVID-19 image with an all-black mask;
    # "sub dir/b.png" gets a safe key.
    body = {"revision": 0, "outcome": "no_infection", "annotator": "Dr. A"}
    r = c.post("/api/annotate/xrays__sub_dir__b", json=body)
    assert r.status_code == 200, r.text
    assert not (out / "controls").exists()

    recs = [json.loads(x) for x in (out / PROVENANCE).read_text().splitlines()]
    assert recs[0]["image"] == "a.png" and recs[0]["chosen"] == "cand_b"
    assert recs[0]["dice_chosen_vs_final"] == pytest.approx(dice(masks["cand_b"], final))
    assert recs[0]["seconds"] == 12.5 and recs[0]["annotator"] == "Dr. A"
    assert recs[1]["outcome"] == "no_infection" and recs[1]["chosen"] is None
    assert recs[1]["mask_area_percent"] == 0.0

    # The folder is a QaTa-COV19 dataset: the TFDS builder reads both as COVID-19 examples.
    cfg = data.default_config()
    cfg.dataset, cfg.data_dir, cfg.manual_dir = "qatacov19/v1", str(out.parent / "tfds"), str(out)
    cfg.stored_size = 32
    source = data.prepare(cfg).as_data_source("train")
    exs = {source[i]["filename"].decode(): source[i] for i in range(len(source))}
    assert set(exs) == {"xrays__a.png", "xrays__sub_dir__b.png"}
    assert all(int(e["label"]) == 1 for e in exs.values())
    assert exs["xrays__a.png"]["mask"].any() and not exs["xrays__sub_dir__b.png"]["mask"].any()

    # Restart: a new server over the same folders resumes where the first stopped.
    c2 = _annotate_client(engine, imgs, out)
    p = c2.get("/api/annotate").json()
    assert (p["total"], p["done"], p["pending"], p["next"]) == (3, 2, 1, "xrays__c")
    again = c2.get("/api/annotate/xrays__a").json()
    assert again["revision"] == 1 and again["status"]["state"] == "accepted"
    np.testing.assert_array_equal(_decode(again["mask"]) > 0, final)  # shown for correction


def test_folders_of_the_earlier_store_are_converted(engine, annotation_dirs):
    """The earlier store filed "no infection" X-rays under controls/ (a control label); a
    server on such a folder turns them into COVID-19 X-rays with an all-black mask."""
    imgs, out = annotation_dirs
    old = {"key": "xrays__c", "revision": 1, "decision": "no_infection", "chosen": "manual"}
    out.mkdir()
    (out / PROVENANCE).write_text(json.dumps({**old, "source": str(imgs / "c.png")}) + "\n")
    write_xray(out / "controls" / "xrays__c.png", 32, 32, seed=3)
    c = _annotate_client(engine, imgs, out)
    assert not (out / "controls" / "xrays__c.png").exists()
    mask = np.asarray(Image.open(out / DATASET_DIR / "Ground-truths" / "mask_xrays__c.png"))
    assert mask.shape == (32, 32) and not mask.any()
    item = c.get("/api/annotate/xrays__c").json()
    assert item["status"]["outcome"] == "no_infection" and item["history"][0]["annotator"]


def test_concurrent_saves_conflict_instead_of_losing_a_mask(engine, annotation_dirs):
    imgs, out = annotation_dirs
    c = _annotate_client(engine, imgs, out)
    rev = c.get("/api/annotate/xrays__c").json()["revision"]
    a, b = np.zeros((32, 32), bool), np.zeros((32, 32), bool)
    a[5:15, 5:15], b[20:30, 20:30] = True, True
    results = {}

    def save(who, mask):
        body = {"revision": rev, "outcome": "draw", "mask": _mask_url(mask), "annotator": who}
        results[who] = c.post("/api/annotate/xrays__c", json=body)

    threads = [threading.Thread(target=save, args=w) for w in (("A", a), ("B", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in results.values())
    assert codes == [200, 409], {k: r.text for k, r in results.items()}
    winner = next(k for k, r in results.items() if r.status_code == 200)
    loser = "B" if winner == "A" else "A"
    assert "reload" in results[loser].json()["error"]
    on_disk = np.asarray(Image.open(out / DATASET_DIR / "Ground-truths" / "mask_xrays__c.png")) > 0
    np.testing.assert_array_equal(on_disk, a if winner == "A" else b)
    # The loser reloads (revision 1) and saves: the winner's mask moves to history/.
    body = {"revision": 1, "mask": _mask_url(b if winner == "A" else a), "annotator": loser}
    assert c.post("/api/annotate/xrays__c", json=body).status_code == 200
    old = np.asarray(Image.open(out / "history" / "xrays__c.r1.mask.png")) > 0
    np.testing.assert_array_equal(old, a if winner == "A" else b)


def test_annotation_errors(engine, annotation_dirs, client):
    imgs, out = annotation_dirs
    c = _annotate_client(engine, imgs, out)
    assert c.get("/api/annotate/nope").status_code == 404
    assert c.get("/api/annotate/..%2F..%2Fetc").status_code == 404
    who = {"annotator": "A"}
    r = c.post(
        "/api/annotate/xrays__a",
        json={"revision": 0, "mask": _mask_url(np.ones((8, 8), bool)), **who},
    )
    assert r.status_code == 422 and "reload" in r.json()["error"]
    r = c.post("/api/annotate/xrays__a", json={"revision": 0, "source": "x", "mask": "y", **who})
    assert r.status_code == 422 and "candidates" in r.json()["error"]
    r = c.post("/api/annotate/xrays__a", json={"revision": "0", **who})
    assert r.status_code == 422 and "revision" in r.json()["error"]
    # The body is strict (`schemas.DecisionRequest`): a wrong type or an unknown field is a
    # JSON 422 naming the field, never a 500 or a silent coercion; a name is required.
    for bad, field in [
        ({"revision": 0, "no_infection": True}, "annotator"),
        ({"revision": True, "no_infection": True, **who}, "revision"),
        ({"revision": 0, "mask": None, **who}, "mask"),
        ({"revision": 0, "mask": 7, **who}, "mask"),
        ({"revision": 0, "no_infection": "yes", **who}, "no_infection"),
        ({"revision": 0, "no_infection": True, "seconds": "12", **who}, "seconds"),
        ({"revision": 0, "no_infection": True, "annotator": 5}, "annotator"),
        ({"revision": 0, "no_infection": True, "maks": "x", **who}, "maks"),
        ({"outcome": "maybe", **who}, "outcome"),
        ([0], "request"),
    ]:
        r = c.post("/api/annotate/xrays__a", json=bad)
        assert r.status_code == 422 and field in r.json()["error"], (bad, r.text)
    r = c.post("/api/annotate/xrays__a", content=b"{not json", headers=JSON_TYPE)
    assert r.status_code == 422 and "JSON" in r.json()["error"]
    # An unknown image is a 404 before its body is looked at.
    assert c.post("/api/annotate/nope", json={"revision": "x"}).status_code == 404
    assert not (out / PROVENANCE).exists()  # nothing was saved by the refused requests
    assert client.get("/api/annotate").status_code == 404  # demo-only server
    with pytest.raises(ValueError, match="outside"):
        _session(engine, imgs, imgs / "out")
    # A later batch in a folder of another name adds to the dataset; the same folder name
    # somewhere else would replace accepted masks, and is refused.
    body = {"revision": 0, "no_infection": True, **who}
    assert c.post("/api/annotate/xrays__c", json=body).status_code == 200
    write_xray(out.parent / "batch2" / "c.png")
    assert _session(engine, out.parent / "batch2", out).progress()["next"] == "batch2__c"
    write_xray(out.parent / "elsewhere" / "xrays" / "c.png")
    with pytest.raises(ValueError, match="another name"):
        _session(engine, out.parent / "elsewhere" / "xrays", out)


def test_blind_mode_hides_model_names_but_records_them(engine, annotation_dirs):
    imgs, out = annotation_dirs
    c = _annotate_client(engine, imgs, out, blind=True)
    cfg = c.get("/api/config").json()
    assert cfg["candidates"] == [] and cfg["models"] == {} and cfg["checkpoint"] == ""
    # The candidates are the runs "infection" (also the demo model) and "cand_b": neither
    # run's folder nor its label appears ("infection" is also a role, so check the paths).
    runs = [Path(r).absolute() for r in (engine.runs["infection"], engine.runs["cand_b"])]
    text = c.get("/api/config").text
    assert "cand_b" not in text and not any(str(r) in text for r in runs)
    assert "tiny test model" not in text and "model from" not in text
    # The demo tab of the same page names no model either.
    r = c.post("/api/predict", files={"file": ("x.png", _png())})
    assert r.status_code == 200 and r.json()["checkpoint"] == ""
    assert str(runs[0]) not in r.text and "cand_b" not in r.text
    assert r.json()["model"] == "not named (blind annotation)"  # the lung model is no candidate
    item = c.get("/api/annotate/xrays__a").json()
    shown = [x["name"] for x in item["candidates"]]
    assert shown == ["candidate A", "candidate B"]  # no consensus: it would mark the models
    assert item == c.get("/api/annotate/xrays__a").json()  # the same order on reload
    real = blind_labels("xrays__a", ["infection", "cand_b"])["candidate A"]
    mask = _decode(item["candidates"][0]["mask"]) > 0
    body = {"revision": 0, "source": "candidate A", "mask": _mask_url(mask), "annotator": "A"}
    r = c.post("/api/annotate/xrays__a", json=body)
    assert "infection" not in r.text and "cand_b" not in r.text
    saved = r.json()["saved"]
    assert saved["candidate"] == "candidate A" and saved["dice_candidate_vs_final"] == 1.0
    rec = json.loads((out / PROVENANCE).read_text())
    assert rec["chosen"] == real and rec["shown"] == "candidate A"
