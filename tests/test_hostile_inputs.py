"""Hospital files and hostile uploads: decompression bombs refused from their header (with
a memory bound), compressed DICOM decoded or refused in one line, non-radiographs refused,
killed batch jobs rerun, damaged run files in one line, and the server's exposure (hosts,
headers, token, streamed uploads).

Cheap throughout: bombs are written without decoding them, models are the tiny one."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from data_fakes import write_dicom_pixels
from PIL import Image

from qatacov_jax.data import image_limits, imageio
from qatacov_jax.data.imageio import ImageReadError, read_xray_with_info

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    from train_utils import write_tiny_run

    return write_tiny_run(tmp_path_factory.mktemp("runs") / "tiny")


# ------------------------------------------------------------------ bombs


def png_bomb(path: Path, side: int) -> Path:
    """A valid grey PNG of side x side zeros, written row by row (never held in memory):
    a few hundred KB on disk, side**2 bytes decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    z = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte + samples
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def dicom_dataset(rows: int, cols: int, *, modality: str = "DX", frames: int = 1):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Modality = modality
    ds.Rows, ds.Columns = rows, cols
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    return ds


def deflated_dicom_bomb(path: Path, side: int, trailing: int = 0) -> Path:
    """A deflated DICOM of side x side zeros (+ `trailing` bytes of padding the header does
    not declare): tens of KB on disk."""
    ds = dicom_dataset(side, side)
    ds.PixelData = bytes(side * side)
    if trailing:
        ds.add_new(0xFFFCFFFC, "OB", bytes(trailing))  # Data Set Trailing Padding
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def rle_dicom_claiming(path: Path, side: int) -> Path:
    """An RLE DICOM whose header declares side x side pixels over a few bytes of data (what
    a 244 KB file of 16000 x 16000 does): only the header must be read."""
    from pydicom.encaps import encapsulate

    ds = dicom_dataset(side, side)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.RLELossless
    ds.PixelData = encapsulate([b"\0" * 64])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bombs")
    return {
        "png_9000": png_bomb(d / "png_9000.png", 9000),
        "dicom_deflated_7000": deflated_dicom_bomb(d / "deflated.dcm", 7000),
        "dicom_rle_16000": rle_dicom_claiming(d / "rle16000.dcm", 16000),
        "dicom_deflated_lying": deflated_dicom_bomb(d / "lying.dcm", 64, trailing=48 << 20),
    }


def test_bombs_are_small_files_refused_from_their_header(bombs):
    for name, path in bombs.items():
        assert path.stat().st_size < 400_000, (name, path.stat().st_size)
        with pytest.raises(ImageReadError) as e:
            read_xray_with_info(path)
        assert e.value.refused, (name, e.value.reason)
        assert "\n" not in e.value.reason
        if name != "dicom_deflated_lying":
            assert "--max-megapixels" in e.value.reason and "million" in e.value.reason
    assert "more data than its header declares" in str(
        pytest.raises(ImageReadError, read_xray_with_info, bombs["dicom_deflated_lying"]).value
    )


def test_bomb_refusals_keep_memory_flat(bombs):
    """Reading every bomb (in a fresh process, so its peak RSS is its own) raises the peak
    by less than 100 MB; decoding any of them would take gigabytes."""
    script = textwrap.dedent(
        """
        import json, resource, sys
        from qatacov_jax.data import imageio
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        refused = 0
        for p in sys.argv[1:]:
            try:
                imageio.read_xray_with_info(p)
            except imageio.ImageReadError as e:
                refused += e.refused
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"growth_kb": after - before, "refused": refused}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script, *map(str, bombs.values())],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["refused"] == len(bombs)
    assert got["growth_kb"] < 100 * 1024, got


def test_pixel_budget_is_one_setting(tmp_path, monkeypatch):
    path = png_bomb(tmp_path / "b.png", 3000)  # 9 million pixels
    try:
        image_limits.set_max_megapixels(8)
        with pytest.raises(ImageReadError, match="over the limit of 8 million"):
            read_xray_with_info(path)
        image_limits.set_max_megapixels(None)
        monkeypatch.setenv(image_limits.MAX_MEGAPIXELS_ENV, "5")
        assert image_limits.max_pixels() == 5_000_000
        with pytest.raises(ImageReadError, match="limit of 5 million"):
            read_xray_with_info(path)
        monkeypatch.setenv(image_limits.MAX_MEGAPIXELS_ENV, "10")
        assert read_xray_with_info(path)[0].shape == (3000, 3000)
        monkeypatch.setenv(image_limits.MAX_MEGAPIXELS_ENV, "lots")
        with pytest.raises(ValueError, match="not a positive number"):
            image_limits.max_pixels()
    finally:
        image_limits.set_max_megapixels(None)


def test_infer_cli_refuses_a_bomb_in_its_report(tmp_path, tiny_run, capsys):
    from qatacov_jax.cli import infer as infer_cli

    src = tmp_path / "in"
    src.mkdir()
    png_bomb(src / "bomb.png", 9000)
    Image.fromarray(np.full((48, 40), 90, np.uint8)).save(src / "ok.png")
    out = tmp_path / "out"
    argv = ["--checkpoint", str(tiny_run), str(src), "--compilation-cache=off"]
    code = infer_cli.main([*argv, "--out", str(out)])
    assert code == 1
    rows = {
        Path(r["file"]).name: r for r in json.loads((out / "report.json").read_text())["images"]
    }
    assert rows["ok.png"]["status"] == "ok"
    assert "--max-megapixels" in rows["bomb.png"]["error"]
    assert (
        infer_cli.main(
            [
                "--checkpoint",
                str(tiny_run),
                str(src),
                "--out",
                str(tmp_path / "o2"),
                "--max-megapixels",
                "0",
            ]
        )
        == 2
    )
    assert "--max-megapixels must be positive" in capsys.readouterr().err


# ------------------------------------------------------------------ DICOM variety


# The files of pydicom's wheel (never `get_testdata_files`, which tries to download more).
PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"


def _testdata() -> list[Path]:
    return sorted(f for f in PYDICOM_FILES.glob("*.dcm") if f.is_file())


def test_pydicom_test_files_ship_offline():
    files = _testdata()
    assert len(files) > 50
    assert {"JPGExtended.dcm", "CT_small.dcm", "no_meta.dcm"} <= {f.name for f in files}


def test_every_pydicom_test_file_gives_a_map_or_one_line():
    """pydicom's own test files: each is read to a map, or refused with one line that names
    no path and no exception class (CT, MR, US... as not radiographs)."""
    for f in _testdata():
        try:
            img, note = read_xray_with_info(f)
        except ImageReadError as e:
            reason = e.reason
            assert reason and "\n" not in reason and len(reason) < 300, (f.name, reason)
            assert "/" not in reason.replace("N/A", "") or "pydicom" not in reason, reason
            assert "force=True" not in reason and "Error:" not in reason, (f.name, reason)
        else:
            assert img.ndim == 2 and img.dtype == np.float32 and note, f.name


def _as_radiograph(name: str, tmp_path: Path) -> Path:
    """pydicom's test file `name` with Modality DX (the decoders are the point)."""
    ds = pydicom.dcmread(PYDICOM_FILES / name)
    ds.Modality = "DX"
    ds.save_as(tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize(
    "name, syntax",
    [
        ("JPGExtended.dcm", "12-bit JPEG Extended"),
        ("SC_rgb_jpeg_gdcm.dcm", "JPEG Lossless"),
        ("MR_small_jpeg_ls_lossless.dcm", "JPEG-LS"),
        ("MR_small_jp2klossless.dcm", "JPEG 2000"),
        ("GDCMJ2K_TextGBR.dcm", "colour JPEG 2000 (YBR_RCT)"),
        ("MR_small_RLE.dcm", "RLE"),
        ("image_dfl.dcm", "deflated"),
    ],
)
def test_compressed_dicom_decodes(name, syntax, tmp_path):
    img, note = read_xray_with_info(_as_radiograph(name, tmp_path))
    assert img.ndim == 2 and 0.0 <= img.min() < img.max() <= 1.0, syntax
    assert "DICOM" in note


def test_missing_decoder_names_its_package(monkeypatch):
    import importlib.util

    ds = pydicom.dcmread(PYDICOM_FILES / "MR_small_jp2klossless.dcm")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda m, *a: None if m == "openjpeg" else real(m, *a)
    )
    reason = imageio._pixel_problem(ds, RuntimeError("no decoder"))
    assert "pylibjpeg-openjpeg" in reason and "libjpeg " not in reason
    assert "JPEG 2000" in reason


def test_non_radiographs_and_tiny_images_are_refused(tmp_path):
    ct = PYDICOM_FILES / "CT_small.dcm"
    with pytest.raises(ImageReadError, match="Modality is CT, not a radiograph") as e:
        read_xray_with_info(ct)
    assert e.value.refused
    with pytest.raises(ImageReadError, match="no DICOM file header") as e:
        read_xray_with_info(PYDICOM_FILES / "no_meta.dcm")
    assert "force" not in e.value.reason
    ds = dicom_dataset(64, 64, frames=3)
    ds.PixelData = bytes(64 * 64 * 3)
    ds.save_as(tmp_path / "multi.dcm", enforce_file_format=True)
    with pytest.raises(ImageReadError, match="multi-frame DICOM \\(3 frames\\)"):
        read_xray_with_info(tmp_path / "multi.dcm")
    Image.fromarray(np.full((3, 3), 90, np.uint8)).save(tmp_path / "tiny.png")
    assert read_xray_with_info(tmp_path / "tiny.png")[0].shape == (3, 3)  # the data reader
    with pytest.raises(ImageReadError, match="3 x 3 pixels, too small"):
        read_xray_with_info(tmp_path / "tiny.png", min_side=image_limits.MIN_RADIOGRAPH_SIDE)
    write_dicom_pixels(tmp_path / "dx.dcm", np.full((40, 40), 100), "MONOCHROME2")
    ds = pydicom.dcmread(tmp_path / "dx.dcm")
    del ds.Modality  # converters drop it: accepted
    ds.save_as(tmp_path / "nomod.dcm")
    assert read_xray_with_info(tmp_path / "nomod.dcm")[0].shape == (40, 40)


def test_dicom_mapping_unchanged_by_the_checks(tmp_path):
    """The header checks read the file first; the intensity mapping is the one of
    tests/test_data_imageio.py (12 bits stored, no window: values / 4095)."""
    x = np.arange(40 * 36).reshape(40, 36) % 4096
    write_dicom_pixels(tmp_path / "x.dcm", x, "MONOCHROME1")
    img, note = read_xray_with_info(tmp_path / "x.dcm")
    np.testing.assert_allclose(img, 1.0 - x / 4095, atol=1e-6)
    assert note.endswith("values / 4095, inverted (MONOCHROME1)")


# ------------------------------------------------------------------ killed batch jobs


def _xrays(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(n):
        Image.fromarray((rng.random((48, 40)) * 255).astype(np.uint8)).save(folder / f"x{k}.png")
    return folder


def test_killed_infer_run_is_finished_by_a_rerun(tmp_path, tiny_run, monkeypatch):
    """A run killed after 3 of 6 images (the kill is a BaseException out of the 4th write,
    leaving that write's temporary file) is finished by the same command: the 3 are kept,
    the rest done, temporaries removed; with other settings it is refused unless
    --overwrite, which redoes everything."""
    from qatacov_jax.inference import files
    from qatacov_jax.runtime import unfinished

    src, out = _xrays(tmp_path / "in", 6), tmp_path / "out"
    real_save, saved = files.save_png, []

    class Killed(BaseException):
        pass

    def dying_save(path, array, **kw):
        if Path(path).name.startswith("x3_"):  # x0..x2 written; x3 dies mid-write
            unfinished.temporary_of(Path(path)).write_bytes(b"half a png")
            raise Killed
        saved.append(path)
        return real_save(path, array, **kw)

    monkeypatch.setattr(files, "save_png", dying_save)
    with pytest.raises(Killed):
        files.infer_files(tiny_run, [src], out)
    assert (out / unfinished.MARKER).exists() and not (out / "report.json").exists()
    assert list(out.rglob(".*.tmp.png"))
    monkeypatch.setattr(files, "save_png", real_save)

    with pytest.raises(FileExistsError, match="unfinished run .* other settings .*threshold"):
        files.infer_files(tiny_run, [src], out, threshold=0.7)
    predicted = []
    real_run = files.run_inference
    monkeypatch.setattr(
        files,
        "run_inference",
        lambda items, *a, **k: predicted.extend(items) or real_run(items, *a, **k),
    )
    rows = files.infer_files(tiny_run, [src], out)
    assert len(predicted) < 6 and all(r["status"] == "ok" for r in rows) and len(rows) == 6
    assert not list(out.rglob(".*.tmp.*")) and not (out / unfinished.MARKER).exists()
    report = json.loads((out / "report.json").read_text())
    assert sorted(Path(r["file"]).name for r in report["images"]) == [f"x{k}.png" for k in range(6)]
    with pytest.raises(FileExistsError, match="already exists"):  # finished: ours, complete
        files.infer_files(tiny_run, [src], out)
    predicted.clear()
    files.infer_files(tiny_run, [src], out, overwrite=True)
    assert len(predicted) == 6


def test_partial_output_without_journal_is_ours_with_overwrite(tmp_path, tiny_run):
    """Killed before its first report: the marker alone makes --overwrite accept the folder
    (the old refusal said 'not an earlier output'), and a plain rerun finishes it."""
    from qatacov_jax.inference import files
    from qatacov_jax.runtime import unfinished

    src, out = _xrays(tmp_path / "in", 2), tmp_path / "out"
    settings = {"checkpoint": "elsewhere"}
    unfinished.begin(out, files.TOOL, settings, {})
    (out / "x0_map.png").write_bytes(b"a complete map of the killed run")
    with pytest.raises(FileExistsError, match="other settings"):
        files.infer_files(tiny_run, [src], out)
    rows = files.infer_files(tiny_run, [src], out, overwrite=True)
    assert [r["status"] for r in rows] == ["ok", "ok"]


def test_killed_evaluation_keeps_finished_folds(tmp_path, tiny_run, monkeypatch):
    import shutil

    from qatacov_jax.evaluation import runner
    from qatacov_jax.runtime import unfinished

    cv = tmp_path / "cv"
    for k in (0, 1):
        shutil.copytree(tiny_run, cv / f"fold_{k}")
    out = tmp_path / "eval"
    real_write, calls = runner.write_outputs, []

    class Killed(BaseException):
        pass

    def dying_write(path, *a, **k):
        calls.append(path.name)
        if path.name == "fold_1":
            (path / "maps").mkdir(parents=True, exist_ok=True)
            (path / ".metrics.tmp.json").write_text("{")
            raise Killed
        return real_write(path, *a, **k)

    monkeypatch.setattr(runner, "write_outputs", dying_write)
    with pytest.raises(Killed):
        runner.evaluate(cv, out_dir=out, split="test", num_maps=0)
    assert (out / unfinished.MARKER).exists()
    monkeypatch.setattr(runner, "write_outputs", real_write)
    with pytest.raises(FileExistsError, match="other settings"):
        runner.evaluate(cv, out_dir=out, split="test", num_maps=0, threshold=0.3)
    evaluated = []
    real_eval = runner.evaluate_run
    monkeypatch.setattr(
        runner, "evaluate_run", lambda run, **k: evaluated.append(run.name) or real_eval(run, **k)
    )
    result = runner.evaluate(cv, out_dir=out, split="test", num_maps=0)
    assert evaluated == ["fold_1"]  # fold_0 kept from its metrics.json
    assert result["info"]["folds"] == ["fold_0", "fold_1"]
    assert not list(out.rglob(".*.tmp.*")) and not (out / unfinished.MARKER).exists()
    f0 = json.loads((out / "fold_0" / "metrics.json").read_text())
    assert result["num_images"] == 2 * f0["num_images"]


# ------------------------------------------------------------------ damaged run files


def _damaged_runs(tiny_run: Path, base: Path) -> dict[str, Path]:
    import shutil

    runs = {}
    cfg = shutil.copytree(tiny_run, base / "cfg")
    (cfg / "config.json").write_text((cfg / "config.json").read_text()[:100])
    runs["config"] = cfg
    ck = shutil.copytree(tiny_run, base / "ckpt")
    for f in (ck / "checkpoints" / "best").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(f.read_bytes()[:10])
    runs["checkpoint"] = ck
    return runs


@pytest.mark.parametrize("command", ["infer", "export", "evaluate", "serve"])
def test_damaged_run_files_are_one_line_and_exit_65(command, tmp_path, tiny_run, capfd):
    """A truncated config.json or checkpoint: one line naming the file, exit 65, and none of
    the 'Event loop is closed' tracebacks orbax prints on its way down (captured at the
    file descriptors, where those threads write)."""
    import importlib

    main = importlib.import_module(f"qatacov_jax.cli.{command}").main
    src = _xrays(tmp_path / "in", 1)
    for what, run in _damaged_runs(tiny_run, tmp_path).items():
        out = str(tmp_path / f"out_{what}")
        argv = {
            "infer": ["--checkpoint", str(run), str(src), "--out", out],
            "export": [str(run), "--format", "stablehlo", "--out", out],
            "evaluate": [str(run), "--split", "test", "--out", out],
            "serve": ["--checkpoint", str(run), "--port", "1"],
        }[command]
        code = main([*argv, "--compilation-cache=off"] if command != "export" else argv)
        err = [ln for ln in capfd.readouterr().err.splitlines() if not _noise(ln)]
        assert code == 65, (what, code, err)
        assert len(err) == 1 and err[0].startswith("error: "), (what, err)
        name = "config.json" if what == "config" else "checkpoint"
        assert name in err[0] and str(run) in err[0], err[0]


def _noise(line: str) -> bool:
    """Start-up notices of TensorFlow/XLA (not ours) and log lines of the run."""
    return (
        not line.strip()
        or line.startswith(("WARNING: All log messages", "I0000", "W0000", "INFO ", "WARNING "))
        or "oneDNN" in line
    )


def test_unwritable_out_is_one_line_and_exit_74(tmp_path, tiny_run, capsys):
    from qatacov_jax.cli import infer as infer_cli

    src = _xrays(tmp_path / "in", 1)
    blocker = tmp_path / "file"
    blocker.write_text("a file where the folder should go")
    argv = ["--checkpoint", str(tiny_run), str(src), "--compilation-cache=off"]
    code = infer_cli.main([*argv, "--out", str(blocker / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 74 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert str(blocker) in err


# ------------------------------------------------------------------ the server


@pytest.fixture(scope="module")
def web_engine(tiny_run):
    from qatacov_jax.webapp.engine import load_engine

    eng = load_engine(tiny_run, annotate=True, batch_size=1)
    yield eng
    eng.close()


def _app(engine, session=None, **settings):
    from qatacov_jax.webapp.app import Settings, create_app

    return create_app(engine, Settings(**settings), session)


def test_foreign_host_names_are_refused_and_headers_are_set(web_engine):
    from fastapi.testclient import TestClient

    from qatacov_jax.webapp.guards import allowed_hosts

    hosts = allowed_hosts("127.0.0.1")
    c = TestClient(_app(web_engine, allowed_hosts=hosts), base_url="http://127.0.0.1:8000")
    page = c.get("/")
    assert page.status_code == 200
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["referrer-policy"] == "no-referrer"
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "http" not in csp
    assert c.get("/api/config").headers["cache-control"] == "no-store"
    for evil in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example"):
        r = c.get("/api/config", headers={"host": evil})
        assert r.status_code == 400 and "not served here" in r.json()["error"], evil
    assert c.get("/", headers={"host": "localhost:8000"}).status_code == 200
    assert c.get("/", headers={"host": "[::1]:8000"}).status_code == 200
    assert "xray.hospital.example" in allowed_hosts("0.0.0.0", ("xray.hospital.example",))
    assert "0.0.0.0" not in allowed_hosts("0.0.0.0")
    assert "10.1.2.3" in allowed_hosts("10.1.2.3")


def test_decision_bodies_of_wrong_types_are_json_422(web_engine, tmp_path):
    """The strict DecisionRequest: a string for a boolean, a nested list for a mask,
    negative or non-numeric seconds and control characters in a name are JSON 422s naming
    the field; nothing is saved."""
    from fastapi.testclient import TestClient

    from qatacov_jax.webapp.annotation import PROVENANCE, AnnotationSession, LiveCandidates

    imgs, out = _xrays(tmp_path / "xrays", 1), tmp_path / "accepted"
    source = LiveCandidates(imgs, web_engine.candidate_names, 0.5, web_engine.candidates.predict)
    c = TestClient(_app(web_engine, AnnotationSession(source, out)))
    key = c.get("/api/annotate").json()["next"]
    who = {"annotator": "A", "revision": 0}
    for bad, field in [
        ({"no_infection": "false", **who}, "no_infection"),
        ({"mask": [[0]], **who}, "mask"),
        ({"no_infection": True, "seconds": -5, **who}, "seconds"),
        ({"no_infection": True, "revision": -1, "annotator": "A"}, "revision"),
        ({"no_infection": True, "revision": 0, "annotator": "A\x1b[31m"}, "annotator"),
        ({"no_infection": True, "revision": 0, "annotator": "A\nB"}, "annotator"),
    ]:
        r = c.post(f"/api/annotate/{key}", json=bad)
        assert r.status_code == 422, (bad, r.status_code, r.text)
        assert field in r.json()["error"], (bad, r.text)
    assert not (out / PROVENANCE).exists()


@pytest.fixture(scope="module")
def live_server(web_engine):
    """The app on uvicorn as scripts/serve.py runs it (guards.uvicorn_config), on a free
    loopback port, with 1 s head and keep-alive timeouts and a 1 MB upload limit."""
    import socket
    import threading
    import time

    import uvicorn

    from qatacov_jax.webapp.guards import allowed_hosts, uvicorn_config

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = _app(web_engine, max_upload_mb=1.0, allowed_hosts=allowed_hosts("127.0.0.1"))
    config = uvicorn_config(
        app, host="127.0.0.1", port=port, header_timeout_s=1.0, keep_alive_s=1.0
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started
    yield port
    server.should_exit = True
    thread.join(timeout=10)


def _connect(port: int):
    import socket

    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s


def test_chunked_upload_is_refused_while_it_streams(live_server):
    """No Content-Length: the 413 comes once the limit is passed, while the client is still
    sending (it stops at the answer, far short of the 16 MB it meant to send)."""
    import select

    s = _connect(live_server)
    head = (
        "POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
        "Content-Type: multipart/form-data; boundary=BOUNDARY\r\n\r\n"
    )
    part = (
        b'--BOUNDARY\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
        b"Content-Type: image/png\r\n\r\n"
    )
    s.sendall(head.encode() + b"%x\r\n%s\r\n" % (len(part), part))
    sent, chunk, answer = 0, b"\0" * 65536, b""
    try:
        while sent < 16 << 20:
            if select.select([s], [], [], 0.01)[0]:
                answer = s.recv(65536)
                break
            s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass
    if not answer:
        answer = s.recv(65536)
    s.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"--max-upload-mb" in answer
    assert sent < 8 << 20, sent


def test_slow_request_heads_are_cut_off(live_server):
    import time

    s = _connect(live_server)
    s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and then nothing more
    t0 = time.time()
    assert s.recv(1024) == b""  # closed by the server
    assert time.time() - t0 < 5
    s.close()
    s = _connect(live_server)  # a whole request is still answered
    s.sendall(b"GET /api/config HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert s.recv(64).startswith(b"HTTP/1.1 200")
    s.close()


def test_access_log_never_shows_the_token(live_server):
    import logging
    import urllib.request

    lines = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    handler = Keep()
    logging.getLogger("uvicorn.access").addHandler(handler)
    try:
        url = f"http://127.0.0.1:{live_server}/?token=hunter2-secret&x=1"
        assert urllib.request.urlopen(url, timeout=10).status == 200
    finally:
        logging.getLogger("uvicorn.access").removeHandler(handler)
    assert lines and any("token=***" in ln for ln in lines), lines
    assert not any("hunter2" in ln for ln in lines), lines


def test_serve_reads_its_token_from_a_file_or_the_environment(
    tiny_run, tmp_path, monkeypatch, capsys
):
    import uvicorn

    from qatacov_jax.cli import serve as serve_cli

    started = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: started.append(self.config))
    secret = tmp_path / "token"
    secret.write_text("file-secret-123\n")
    argv = ["--checkpoint", str(tiny_run), "--compilation-cache", "off"]
    assert serve_cli.main([*argv, "--host", "0.0.0.0", "--token-file", str(secret)]) == 0
    app = started[-1].app
    assert app.state.settings.token == "file-secret-123"
    err = capsys.readouterr().err
    assert "file-secret-123" not in err and "?token=<the token>" in err
    monkeypatch.setenv(serve_cli.TOKEN_ENV, "env-secret-456")
    assert serve_cli.main([*argv, "--host", "0.0.0.0", "--allowed-host", "xr.example"]) == 0
    settings = started[-1].app.state.settings
    assert settings.token == "env-secret-456" and "xr.example" in settings.allowed_hosts
    assert "env-secret-456" not in capsys.readouterr().err
    assert serve_cli.main([*argv, "--token", "a", "--token-file", str(secret)]) == 2
    assert serve_cli.main([*argv, "--token-file", str(tmp_path / "none")]) == 2
    assert serve_cli.main([*argv, "--header-timeout", "0"]) == 2


# ------------------------------------------------------------------ start-up


def test_compilation_cache_location_and_off_switch(tmp_path, monkeypatch):
    from qatacov_jax.runtime import compile_cache

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(compile_cache.CACHE_ENV, raising=False)
    assert compile_cache.resolve_cache_dir() == tmp_path / "xdg" / "qatacov_jax" / "jax"
    assert compile_cache.resolve_cache_dir("off") is None
    monkeypatch.setenv(compile_cache.CACHE_ENV, "off")
    assert compile_cache.resolve_cache_dir() is None
    assert compile_cache.resolve_cache_dir(str(tmp_path / "c")) == tmp_path / "c"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert compile_cache.enable_compilation_cache(str(blocker / "c")) is None  # warns only


def test_batch_queue_compiles_larger_buckets_while_idle():
    """The server answers after its smallest bucket compiled; the others compile on the
    worker thread between requests."""
    import time

    from qatacov_jax.webapp.engine import BatchQueue

    warmed = []
    q = BatchQueue(
        lambda imgs: [{"n": len(imgs)} for _ in imgs],
        4,
        warmup=[lambda: warmed.append(2), lambda: warmed.append(4)],
    )
    assert q.predict(np.zeros((2, 2), np.float32), timeout=10) == {"n": 1}
    deadline = time.time() + 10
    while len(warmed) < 2 and time.time() < deadline:
        time.sleep(0.01)
    q.close()
    assert warmed == [2, 4] and q.calls == 1


def test_server_refuses_bombs_and_large_json_without_reading_them(web_engine, tmp_path):
    from fastapi.testclient import TestClient

    from qatacov_jax.webapp.annotation import AnnotationSession, LiveCandidates

    imgs = _xrays(tmp_path / "xrays", 1)
    source = LiveCandidates(imgs, web_engine.candidate_names, 0.5, web_engine.candidates.predict)
    session = AnnotationSession(source, tmp_path / "accepted")
    c = TestClient(_app(web_engine, session, max_upload_mb=1.0))
    bomb = png_bomb(tmp_path / "bomb.png", 9000).read_bytes()
    r = c.post("/api/predict", files={"file": ("bomb.png", bomb)})
    assert r.status_code == 413 and "--max-megapixels" in r.json()["error"], r.text
    # Smaller than a radiograph: refused as infer.py refuses it, not given a decision.
    tiny = io.BytesIO()
    Image.fromarray(np.full((20, 24), 90, np.uint8)).save(tiny, format="PNG")
    r = c.post("/api/predict", files={"file": ("tiny.png", tiny.getvalue())})
    assert r.status_code == 422 and "too small for a chest radiograph" in r.json()["error"]
    key = c.get("/api/annotate").json()["next"]
    big = json.dumps({"annotator": "A", "note": "x" * (3 << 20)})
    r = c.post(f"/api/annotate/{key}", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "--max-upload-mb" in r.json()["error"]


def test_serving_commands_do_not_import_tensorflow():
    """TensorFlow (the data pipeline's and clu's) costs seconds of every start; serve.py and
    infer.py never need it."""
    code = (
        "import sys; import qatacov_jax.cli.serve, qatacov_jax.cli.infer, "
        "qatacov_jax.webapp.engine; print('tensorflow' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--restarts", "0"], "--restarts must be a positive integer"),
        (["--timeout", "-1"], "--timeout must be a positive number"),
        (["--run", "/nonexistent"], "--run /nonexistent is not a run directory"),
    ],
)
def test_serve_startup_benchmark_refuses_bad_options(argv, message, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "serve_startup", ROOT / "benchmarks" / "serve_startup.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as e:
        module.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err
    report = {
        "model": "m",
        "cpus": 2,
        "note": "n",
        "results": [{"start": "restart", "config_s": 7.1, "predict_s": 7.2, "load_avg": 1.0}],
    }
    assert "| restart | 7.1 | 7.2 | 20 | 1.0 |" in module.markdown(report)
