"""Refusals that must happen before anything is written, the run-directory lock, safe
`--overwrite`, 16-bit PNGs with 12-bit data and bad inference inputs.

Everything here is cheap: no training (the configuration is refused before the data or
the model is touched); the lock's second holder is a small child process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from data_fakes import write_dicom_pixels
from PIL import Image, PngImagePlugin

from qatacov_jax.cli import infer as infer_cli
from qatacov_jax.cli import train as train_cli
from qatacov_jax.data import imageio
from qatacov_jax.data.image_limits import MIN_RADIOGRAPH_SIDE
from qatacov_jax.evaluation.reports import check_outputs_free
from qatacov_jax.inference import files as infer
from qatacov_jax.inference.reports import REPORT_JSON, write_reports
from qatacov_jax.runtime import locking
from qatacov_jax.weights import WeightsError
from qatacov_jax.weights.port import port

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = str(ROOT / "configs" / "quickstart.py")


@pytest.mark.parametrize(
    "overrides, named",
    [
        (["--config", "configs/no_such_config.py"], "no_such_config.py"),
        (["--config", QUICKSTART, "--config.optim.lrr=1"], "--config.optim.lrr: no such setting"),
        (["--config", QUICKSTART, "--config.optim.lr=-1"], "config.optim.lr=-1.0 is invalid"),
        (["--config", QUICKSTART, "--config.num_epochs=0"], "config.num_epochs=0 is invalid"),
        (["--config", QUICKSTART, "--config.num_epochs=x"], "--config.num_epochs=x"),
        (["--config", QUICKSTART, "--config.data.image_size=100"], "config.data.image_size"),
        (["--config", QUICKSTART, "--config.data.manual_dir=/no/such/dir"], "data.manual_dir"),
        (["--config", QUICKSTART, "--config.fold=7"], "config.fold=7 is invalid"),
        (
            ["--config", QUICKSTART, "--config.batch_size=3", "--config.num_devices=2"],
            "config.batch_size to a multiple of 2",
        ),
    ],
)
def test_bad_configuration_is_one_line_and_writes_nothing(overrides, named, tmp_path, capsys):
    workdir = tmp_path / "run"
    assert train_cli.main([*overrides, "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    assert named in err and "Traceback" not in err
    # A failed start leaves no config.json, so the corrected command is not refused.
    assert not (workdir / "config.json").exists()


def test_none_overrides_and_did_you_mean(tmp_path):
    fv = train_cli.config_and_workdir(
        ["--config", QUICKSTART, "--config.fold=None", "--workdir", str(tmp_path)],
        "p",
        "d",
        "w",
    )
    assert fv.config.fold is None
    fv = train_cli.config_and_workdir(
        ["--config", QUICKSTART, "--config.steps_per_epoch", "None", "--workdir", "x"],
        "p",
        "d",
        "w",
    )
    assert fv.config.steps_per_epoch is None


@pytest.mark.parametrize(
    "flag, value, named",
    [("--batch-size", "-1", "--batch-size"), ("--display-floor", "5", "--display-floor")],
)
def test_infer_rejects_bad_numbers(flag, value, named, tmp_path, capsys):
    png = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png)
    argv = ["--checkpoint", str(tmp_path), "--out", str(tmp_path / "out"), str(png)]
    assert infer_cli.main([*argv, f"{flag}={value}"]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


HOLDER = textwrap.dedent(
    """
    import sys, time
    from qatacov_jax.runtime.locking import run_dir_lock
    with run_dir_lock(sys.argv[1], purpose="train"):
        print("locked", flush=True)
        time.sleep(600)
    """
)


def test_second_writer_is_refused_and_a_dead_holders_lock_is_not_stale(tmp_path, capsys):
    """A live holder in another process: the lock and scripts/train.py refuse at once,
    naming the host and pid; after kill -9 of the holder the directory is free again."""
    workdir = tmp_path / "run"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(workdir)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(locking.DirectoryLockedError) as e:
            with locking.run_dir_lock(workdir, purpose="evaluate"):
                pass
        msg = str(e.value)
        assert f"pid {holder.pid}" in msg and socket.gethostname() in msg and "train" in msg
        argv = ["--config", QUICKSTART, "--workdir", str(workdir)]
        assert train_cli.main(argv) == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and "in use by" in err
        assert not (workdir / "config.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with locking.run_dir_lock(workdir, purpose="train"):  # the kernel dropped the dead lock
        owner = locking.read_owner(workdir)
        assert owner["pid"] == os.getpid() and owner["purpose"] == "train"
        with pytest.raises(locking.DirectoryLockedError, match=f"pid {os.getpid()}"):
            with locking.run_dir_lock(workdir, purpose="infer"):  # same process, 2nd writer
                pass
    assert locking.read_owner(workdir) is None


def test_overwrite_only_replaces_our_outputs(tmp_path):
    mine = tmp_path / "unrelated"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    (mine / "x_map.png").write_text("also precious")
    (mine / "metrics.json").write_text("{}")
    with pytest.raises(WeightsError, match="not an earlier output of port_weights"):
        port(tmp_path / "missing.h5", "densenet121", mine, overwrite=True)
    items = [infer.InputItem(tmp_path / "x.png", "x")]
    with pytest.raises(FileExistsError, match="not an earlier output of scripts/infer.py"):
        infer.check_no_overwrite(items, mine, False, True)
    with pytest.raises(FileExistsError, match="not an earlier output of scripts/evaluate.py"):
        check_outputs_free(mine, True)
    assert sorted(p.name for p in mine.iterdir()) == ["metrics.json", "thesis.tex", "x_map.png"]
    # An earlier output of ours may be replaced.
    (mine / "report.json").write_text(json.dumps({"checkpoint": "run", "images": []}))
    infer.check_no_overwrite(items, mine, False, True)
    (mine / "metrics.json").write_text(json.dumps({"info": {}, "state": {}}))
    check_outputs_free(mine, True)


def _png16(path: Path, values: np.ndarray, sbit: int | None) -> None:
    info = PngImagePlugin.PngInfo()
    if sbit is not None:
        info.add(b"sBIT", bytes([sbit]))
    Image.fromarray(values.astype(np.uint16)).save(path, pnginfo=info)


def test_12_bit_xray_in_16_bit_png(tmp_path):
    """12-bit data (0..4095) in a 16-bit PNG: by sBIT, by the value range without it, and
    scaled to 16 bits as the PNG standard asks (sBIT says 12, samples reach 65535)."""
    data = np.tile(np.linspace(0, 4095, 64).round(), (16, 1))
    _png16(tmp_path / "sbit.png", data, 12)
    assert imageio.png_significant_bits(tmp_path / "sbit.png") == 12
    img, note = imageio.read_xray_with_info(tmp_path / "sbit.png")
    np.testing.assert_allclose(img, data / 4095, atol=1e-6)
    assert "sBIT 12" in note and "4095" in note

    dimmer = (data * 0.75).astype(np.uint16)  # max 3071: still 12-bit data
    _png16(tmp_path / "plain.png", dimmer, None)
    img, note = imageio.read_xray_with_info(tmp_path / "plain.png")
    np.testing.assert_allclose(img, dimmer / 4095, atol=1e-6)
    assert "without sBIT" in note and "12-bit" in note

    scaled = (data.astype(np.uint32) << 4) | (data.astype(np.uint32) >> 8)  # left bit-replication
    _png16(tmp_path / "scaled.png", scaled, 12)
    img, note = imageio.read_xray_with_info(tmp_path / "scaled.png")
    np.testing.assert_allclose(img, scaled / 65535, atol=1e-6)
    assert "scaled to 16 bits" in note


def _dicom_without_pixels(path: Path) -> None:
    write_dicom_pixels(path, np.zeros((4, 4)), "MONOCHROME2")
    import pydicom

    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)


def test_bad_and_extreme_inputs_are_reported_per_file(tmp_path):
    """Per-file errors, the rest processed: a DICOM without pixel data and a 1x1 image
    (too small for a radiograph: no decision) fail alone; an RGBA and a 12-bit-in-16-bit
    PNG are processed at their own size and the report says how each one's intensities were
    read. (An 8000x8000 X-ray is read at full size below; writing its 8000x8000 colour map
    costs two minutes on the CI machine, so it is not pushed through the writers here.)"""
    src = tmp_path / "in"
    src.mkdir()
    _dicom_without_pixels(src / "nopixels.dcm")
    Image.fromarray(np.full((1, 1), 200, np.uint8)).save(src / "one.png")
    rgba = np.zeros((48, 40, 4), np.uint8)
    rgba[..., 1], rgba[..., 3] = 255, 128
    Image.fromarray(rgba, "RGBA").save(src / "rgba.png")
    _png16(src / "deep12.png", np.full((36, 36), 4000), 12)
    items, errors = infer.collect_inputs([src])
    assert not errors

    def predict_batch(images):
        return [{"infection": np.full(img.shape, 0.25, np.float32)} for img in images]

    out = tmp_path / "out"
    rows = infer.run_inference(
        items, predict_batch, out, batch_size=2, min_side=MIN_RADIOGRAPH_SIDE
    )
    by = {Path(r["file"]).name: r for r in rows}
    assert by["nopixels.dcm"]["status"] == "error"
    assert "no pixel data" in by["nopixels.dcm"]["error"]
    assert by["one.png"]["status"] == "error" and "too small" in by["one.png"]["error"]
    for name, shape in (("rgba.png", (48, 40)), ("deep12.png", (36, 36))):
        assert by[name]["status"] == "ok", by[name]
        assert (by[name]["height"], by[name]["width"]) == shape
    assert "RGBA" in by["rgba.png"]["intensity"]
    assert "sBIT 12" in by["deep12.png"]["intensity"]
    write_reports(rows, out, {"checkpoint": "fake"})
    report = json.loads((out / REPORT_JSON).read_text())
    assert {Path(r["file"]).name: r.get("intensity") for r in report["images"]}["rgba.png"]


def test_8000_by_8000_xray_is_read_and_resized(tmp_path):
    """Read at full size where the pixel budget allows it (`--max-megapixels 64`; the
    default budget refuses it from the header: tests/test_hostile_inputs.py)."""
    from qatacov_jax.data.resize import resize_image

    Image.fromarray(np.full((8000, 8000), 90, np.uint8)).save(
        tmp_path / "huge.png", compress_level=1
    )
    img, _ = imageio.read_xray_with_info(tmp_path / "huge.png", max_pixels=64_000_000)
    assert img.shape == (8000, 8000) and img.dtype == np.float32
    np.testing.assert_allclose(img[::997, ::997], 90 / 255, atol=1e-6)
    small = resize_image(img, 32)  # what the predictor feeds the model
    assert small.shape[:2] == (32, 32) and abs(int(small[16, 16]) - 90) <= 1


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory no one can write: chmod for a normal user; for root (whom chmod does not
    stop) a read-only bind mount of it, skipped where mounting is not permitted."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    try:
        subprocess.run(["mount", "--bind", str(d), str(d)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("running as root without mount permission: no way to make a read-only dir")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(d)], check=True, capture_output=True)
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=False, capture_output=True)


def test_read_only_workdir_is_one_line(read_only_dir, capsys):
    workdir = read_only_dir / "run"
    assert train_cli.main(["--config", QUICKSTART, "--workdir", str(workdir)]) == 74
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert str(workdir) in err and ("read-only" in err or "permission denied" in err)


def test_storage_faults_are_recognised_in_their_wrappers():
    import errno

    from qatacov_jax.runtime import storage

    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("orbax: background save failed") from inner
    except RuntimeError as e:
        assert storage.storage_errno(e) == errno.ENOSPC
    tensorstore = ValueError('RESOURCE_EXHAUSTED: Error writing local file "/x/ocdbt.data"')
    assert storage.is_full(storage.storage_errno(tensorstore))
    assert storage.storage_errno(OSError(errno.EDQUOT, "quota")) == errno.EDQUOT
    assert "quota" in storage.describe(errno.EDQUOT)
    assert storage.storage_errno(ValueError("shape mismatch")) is None


def test_stderr_filter_drops_only_closed_loop_tracebacks():
    import io

    from qatacov_jax.runtime.storage import _TracebackFilter

    out = io.StringIO()
    f = _TracebackFilter(out, ("RuntimeError: Event loop is closed",))
    for text in (
        "progress 10%\r",  # passes at once (progress bars)
        "Traceback (most recent call last):\n",
        '  File "orbax.py", line 1\n',
        "RuntimeError: Event loop is closed\n",
        "next line\n",
        "Traceback (most recent call last):\n",
        '  File "ours.py", line 2\n',
        "ValueError: a real error\n",
    ):
        f.write(text)
    f.flush()
    assert out.getvalue() == (
        "progress 10%\rnext line\nTraceback (most recent call last):\n"
        '  File "ours.py", line 2\nValueError: a real error\n'
    )


def test_lower_case_none_stays_a_string():
    fv = train_cli.config_and_workdir(
        ["--config", QUICKSTART, "--config.data.augment=none", "--workdir", "x"], "p", "d", "w"
    )
    assert fv.config.data.augment == "none"


def test_read_only_infer_out_is_one_line(read_only_dir, tmp_path, capsys):
    """infer.py into a read-only --out: exit 74 and one line, before the model is loaded
    (it was a traceback and exit 1)."""
    Image.fromarray(np.full((48, 40), 90, np.uint8)).save(tmp_path / "x.png")
    argv = ["--checkpoint", str(tmp_path / "no_run"), str(tmp_path / "x.png")]
    argv.append("--compilation-cache=off")
    assert infer_cli.main([*argv, "--out", str(read_only_dir / "maps")]) == 74
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "read-only" in err or "permission denied" in err
