"""Faults made to happen for real during training, each followed by a resume
that must end with the same results.json as an uninterrupted run.

In process (cheap): SIGTERM at a random step (a real signal to this process), a truncated
newest checkpoint, a workdir deleted mid-run, lowering num_epochs on a finished run. In a
child process (`tests/reliability_child.py`, slow: import + compile each): a file-size
limit (RLIMIT_FSIZE, EFBIG: what a full disk or quota does to a write) and kill -9 while a
checkpoint is being written.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import train_utils

from qatacov_jax.runtime.storage import StorageError
from qatacov_jax.training import loop as train
from qatacov_jax.training import rundir

HERE = Path(__file__).resolve().parent
# Fields that differ between the compared runs without changing what they compute.
CADENCE = ("log_every_steps", "checkpoint_every_steps")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory) -> dict:
    """results.json of one uninterrupted 2-epoch tiny run (8 steps)."""
    workdir = tmp_path_factory.mktemp("reference")
    train.train_and_evaluate(train_utils.tiny_config(data_dir), workdir)
    return _results(workdir)


def _results(workdir: Path) -> dict:
    """results.json without what legitimately differs: wall time and the cadence fields."""
    results = json.loads((Path(workdir) / rundir.RESULTS_FILE).read_text())
    results.pop("train_time_s")
    for key in CADENCE:
        results["config"].pop(key)
    return results


def _partial_checkpoints(workdir: Path) -> list[Path]:
    return list((workdir / "checkpoints").glob("*/*.orbax-checkpoint-tmp*"))


def test_sigterm_saves_at_the_step_and_resume_matches(reference, data_dir, tmp_path, caplog):
    """A real SIGTERM at a random step: the run saves that step and stops with
    TrainingInterrupted (exit 75 in the CLI); the resumed run, with another log/checkpoint
    cadence (train metrics are per epoch, so that must not matter), ends with the same
    results.json. A copy of the stopped run with its newest checkpoint truncated resumes
    from the previous complete one, says so, and ends the same too."""
    step = random.Random().randint(3, 7)
    config = train_utils.tiny_config(data_dir)
    config.log_every_steps = 1
    config.checkpoint_every_steps = 2

    def send_sigterm(s: int) -> None:
        if s == step:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(train.TrainingInterrupted, match=f"SIGTERM at step {step} of 8"):
        train.train_and_evaluate(config, tmp_path / "a", step_callback=send_sigterm)
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored
    latest = tmp_path / "a" / "checkpoints" / "latest"
    steps = sorted(int(p.name) for p in latest.iterdir() if p.name.isdigit())
    assert steps[-1] == step, steps
    assert not (tmp_path / "a" / rundir.RESULTS_FILE).exists()

    # The copy: truncate every file of the newest checkpoint (a crash mid-flush).
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    newest = tmp_path / "b" / "checkpoints" / "latest" / str(step)
    for f in newest.rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            with open(f, "r+b") as fh:
                fh.truncate(f.stat().st_size // 3)

    train.train_and_evaluate(config, tmp_path / "a")
    assert _results(tmp_path / "a") == reference

    with caplog.at_level("WARNING"):
        train.train_and_evaluate(config, tmp_path / "b")
    assert f"step {step}" in caplog.text and "previous complete one" in caplog.text
    assert _results(tmp_path / "b") == reference
    # The damaged checkpoint is set aside, not deleted.
    assert (tmp_path / "b" / "checkpoints" / "corrupt" / f"latest-{step}").is_dir()


def test_vanished_workdir_is_named(data_dir, tmp_path):
    config = train_utils.tiny_config(data_dir)
    workdir = tmp_path / "run"

    def remove_workdir(step: int) -> None:
        if step == 2:
            shutil.rmtree(workdir)

    with pytest.raises(StorageError, match="vanished during training"):
        train.train_and_evaluate(config, workdir, step_callback=remove_workdir)


def test_fewer_epochs_on_a_finished_run_is_refused(data_dir, tmp_path):
    config = train_utils.tiny_config(data_dir)
    config.num_epochs = 1
    train.train_and_evaluate(config, tmp_path)
    config.num_epochs = 2
    train.train_and_evaluate(config, tmp_path)  # extending is fine
    before = (tmp_path / rundir.RESULTS_FILE).read_bytes()
    config.num_epochs = 1
    with pytest.raises(rundir.ConfigValueError, match="trained for 8 steps"):
        train.train_and_evaluate(config, tmp_path)
    assert (tmp_path / rundir.RESULTS_FILE).read_bytes() == before


def _child(fault: str, step: int, data_dir: str, workdir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [
            sys.executable,
            str(HERE / "reliability_child.py"),
            fault,
            str(step),
            data_dir,
            str(workdir),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_file_size_limit_gives_one_line_and_resume_matches(reference, data_dir, tmp_path):
    """Writes past 1 KiB fail with EFBIG from step 5 on (the checkpoints in flight cannot
    be written): one line naming the cause, the directory and the intact checkpoint,
    exit 74, no partial checkpoint folder, no traceback; the rerun finishes as if nothing
    had happened."""
    workdir = tmp_path / "run"
    proc = _child("fsize", 5, data_dir, workdir)
    assert proc.returncode == 74, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "file-size limit" in errors[0] and str(workdir) in errors[0]
    # The step-4 save may still be in flight when the limit drops: step 3 or 4 is intact.
    assert "the last complete checkpoint (step" in errors[0]
    assert "Traceback" not in proc.stderr and "ImportError" not in proc.stderr
    assert not _partial_checkpoints(workdir)
    train.train_and_evaluate(train_utils.tiny_config(data_dir), workdir)
    assert _results(workdir) == reference


@pytest.mark.slow
def test_kill_9_during_a_checkpoint_save_resumes(reference, data_dir, tmp_path):
    workdir = tmp_path / "run"
    proc = _child("kill9", 6, data_dir, workdir)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    train.train_and_evaluate(train_utils.tiny_config(data_dir), workdir)
    assert _results(workdir) == reference
    assert not _partial_checkpoints(workdir)
