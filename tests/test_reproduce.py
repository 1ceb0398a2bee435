"""scripts/reproduce.py: the papers' tables as data, launched locally or as a job array,
gathered beside the printed values (qatacov_jax.reproduce).

The `quickstart` table runs end to end on the tiny model (`--config.model.arch=tiny`), once
with the local launcher in this process and once as a simulated SLURM job array (one child
process per task with only SLURM_ARRAY_TASK_ID set, one of them killed mid-training and
restarted); both must gather to the same table.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from qatacov_jax.cli import reproduce as cli
from qatacov_jax.reproduce import gather, launchers, paper_values, tables

ROOT = Path(__file__).resolve().parents[1]
TABLE = tables.QUICKSTART
# The tiny model, one device, one reader thread; a checkpoint every 2 steps so that the
# task killed at step 3 resumes mid-epoch.
TINY = [
    "--config.model.arch=tiny",
    "--config.model.encoder=tiny",
    "--config.num_devices=1",
    "--config.data.num_threads=1",
    "--config.checkpoint_every_steps=2",
]


def _args(workdir: Path, data_dir: Path, *more: str, table: str = "quickstart") -> list[str]:
    return [
        "--table",
        table,
        "--workdir",
        str(workdir),
        f"--config.data.data_dir={data_dir}",
        *TINY,
        *more,
    ]


def _run(argv: list[str]) -> tuple[int, str, str]:
    """The CLI in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def _outputs(workdir: Path) -> tuple[str, str, list]:
    out = gather.table_dir(workdir, TABLE)
    rows = json.loads((out / "table.json").read_text())["rows"]
    return (out / "table.md").read_text(), (out / "table.tex").read_text(), rows


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The quickstart table run by `--launcher local` (4 runs, then the table)."""
    workdir = tmp_path_factory.mktemp("local")
    data_dir = tmp_path_factory.mktemp("tfds")
    code, out, err = _run(_args(workdir, data_dir, "--launcher", "local"))
    assert code == 0, err[-3000:]
    return workdir, data_dir, out, err


def test_list_names_every_table(capsys):
    assert cli.main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in ("p1-table2", "p1-table3", "p1-table4", "p1-table6", "p1-table7"):
        assert name in out
    for name in ("p2-lung", "p2-infection", "p2-detection", "quickstart"):
        assert name in out
    assert "24 configurations x 5 folds = 120 runs" in out
    assert "15 configurations x 5 folds = 75 runs" in out


def test_table_definitions():
    assert len(tables.TABLE2.tasks()) == 120 and len(tables.P2_LUNG.tasks()) == 75
    names = {c.name for t in tables.TABLES.values() for c in t.configurations}
    for t in tables.TABLES.values():
        assert set(t.paper) <= {c.name for c in t.configurations}, t.name
        assert set(t.paper_confusion) <= {c.name for c in t.configurations}, t.name
        for c in t.configurations:
            assert (ROOT / c.config_file).is_file(), c.config_file
    assert "paper2/infection_unetpp_densenet121" in names
    task = tables.TABLE2.tasks()[7]  # row 1 (unet_chexnet), fold 2
    assert (task.configuration.name, task.fold, task.run_dir) == (
        "unet_chexnet",
        2,
        "unet_chexnet/fold_2",
    )
    assert tables.TABLE6.tasks()[0].run_dir == "group2_unet_densenet121"
    with pytest.raises(ValueError, match="p1-table2"):
        tables.get_table("table2")


def test_local_launcher_trains_every_run_then_gathers(local):
    workdir, _, out, err = local
    for i in range(1, 5):
        assert f"[{i}/4] quickstart/" in err
    assert err.count("training into") == 4
    for name in ("unet_densenet121", "unet_densenet121_frozen"):
        cv_dir = workdir / "quickstart" / name
        for k in (0, 1):
            results = json.loads((cv_dir / f"fold_{k}" / "results.json").read_text())
            assert results["fold"] == k and results["final_state"]
        summary = json.loads((cv_dir / "results.json").read_text())  # as cross_validate's
        assert summary["folds"] == [0, 1] and summary["config"]["fold"] == 0
    md, tex, rows = _outputs(workdir)
    assert out.endswith(md)  # printed as well (after TFDS's preparation lines)
    assert "Runs: 4 of 4 finished." in md and "Missing runs" not in md
    assert "| U-Net (ran tiny/tiny) | DenseNet-121 | × |" in md
    assert "| U-Net (ran tiny/tiny, frozen) | DenseNet-121 | ✓ |" in md
    assert r"\begin{tabular}" in tex and r"\checkmark" in tex
    free, frozen = rows
    # Freezing the encoder moves its weights to non-trainable; the total stays.
    assert free["params"]["trainable"] > frozen["params"]["trainable"]
    assert sum(free["params"][k] for k in ("trainable", "non_trainable")) == sum(
        frozen["params"][k] for k in ("trainable", "non_trainable")
    )
    cell = free["cells"]["pixel_f1"]
    assert cell["aggregate"] == "mean" and cell["ours"] == cell["mean"]
    assert 0 < cell["ci95"] < 1 and cell["paper_pct"] is None
    det = free["cells"]["detection_sensitivity"]
    assert det["aggregate"] == "pooled" and det["ours"] == det["pooled"]
    manifest = json.loads((gather.table_dir(workdir, TABLE) / "manifest.json").read_text())
    assert manifest["launcher"] == "local" and manifest["pending"] == [0, 1, 2, 3]


def test_rerunning_redoes_nothing(local):
    workdir, data_dir, _, _ = local
    stamps = sorted(
        (p, p.stat().st_mtime_ns) for p in workdir.glob("quickstart/*/fold_*/results.json")
    )
    before = _outputs(workdir)
    code, _, err = _run(_args(workdir, data_dir, "--launcher", "local"))
    assert code == 0, err[-3000:]
    assert err.count("finished earlier, kept") == 4 and "training into" not in err
    assert stamps == sorted(
        (p, p.stat().st_mtime_ns) for p in workdir.glob("quickstart/*/fold_*/results.json")
    )
    assert _outputs(workdir)[:2] == before[:2]
    code, out, _ = _run(_args(workdir, data_dir, "--gather"))
    assert code == 0 and out == before[0]


def test_table_runs_are_ordinary_run_directories(local):
    """A fold loads as a model; a configuration directory is scripts/cross_validate.py's
    own: cross_validate on it keeps every finished fold."""
    from qatacov_jax.evaluation.runner import fold_dirs, is_cv_run
    from qatacov_jax.training import cross_validation, rundir

    workdir, data_dir, _, _ = local
    cv_dir = workdir / "quickstart" / "unet_densenet121"
    model, config, _ = rundir.load_model(cv_dir / "fold_1")
    assert config.fold == 1 and config.model.arch == "tiny"
    assert is_cv_run(cv_dir) and len(fold_dirs(cv_dir)) == 2
    load = cli.ConfigLoader(TABLE, [f"--config.data.data_dir={data_dir}", *TINY], None)
    stamps = [(cv_dir / f"fold_{k}" / "results.json").stat().st_mtime_ns for k in (0, 1)]
    summary = cross_validation.cross_validate(load(TABLE.configurations[0]), cv_dir)
    assert summary["folds"] == [0, 1]
    assert stamps == [(cv_dir / f"fold_{k}" / "results.json").stat().st_mtime_ns for k in (0, 1)]


def test_confusion_and_single_run_layouts(local, tmp_path):
    """Tables 4, 6 and 7 from stand-in runs (copies of one quickstart fold's results): the
    cumulative confusion matrix sums the folds; a single-run table lists metrics as rows."""
    from qatacov_jax.runtime import files

    src = json.loads((local[0] / "quickstart/unet_densenet121/fold_0/results.json").read_text())
    for run_dir, fold, split in [
        ("group2_unet_densenet121", None, "test"),
        *(
            (f"{n}/fold_{k}", k, "eval")
            for n in ("unet_densenet121", "unetpp_densenet121")
            for k in range(5)
        ),
    ]:
        config = {**src["config"], "fold": fold, "eval_split": split}
        files.write_json(
            tmp_path / run_dir / "results.json",
            {**src, "fold": fold, "eval_split": split, "config": config},
        )
    one = src["final_state"]["detection"]

    table4 = gather.gather(tables.TABLE4, tmp_path)
    assert [r["confusion"]["ours"] for r in table4["rows"]] == [
        {k: 5 * v for k, v in one.items()}
    ] * 2
    md4 = (gather.table_dir(tmp_path, tables.TABLE4) / "table.md").read_text()
    assert f"| Control | {5 * one['tn']:,} | {5 * one['fp']:,} | 12,300 | 244 |" in md4
    assert f"| COVID-19 | {5 * one['fn']:,} | {5 * one['tp']:,} | 103 | 2,848 |" in md4
    assert (tmp_path / "unetpp_densenet121" / "results.json").exists()  # cross_validate's

    gather.gather(tables.TABLE6, tmp_path)
    md6 = (gather.table_dir(tmp_path, tables.TABLE6) / "table.md").read_text()
    assert "| Metric | Segmentation (pixel level) | Detection (image level) |" in md6
    sens = [x for x in md6.splitlines() if x.startswith("| Sensitivity |")]
    assert len(sens) == 1 and "[81.72; " in sens[0] and "[94.96; " in sens[0]
    gather.gather(tables.TABLE7, tmp_path)
    md7 = (gather.table_dir(tmp_path, tables.TABLE7) / "table.md").read_text()
    assert f"| Control | {one['tn']:,} | {one['fp']:,} | 26,534 | 31 |" in md7
    tex7 = (gather.table_dir(tmp_path, tables.TABLE7) / "table.tex").read_text()
    assert "26,534 & 31 & 44 & 829" in tex7


def _array_indices(spec: str) -> list[int]:
    out = []
    for part in spec.split("%")[0].split(","):
        a, _, b = part.partition("-")
        out += range(int(a), int(b or a) + 1)
    return out


def _sbatch(path: Path) -> tuple[dict[str, str], list[str]]:
    """(#SBATCH options, the arguments of the command it executes)."""
    text = path.read_text()
    options = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)$", text, re.M))
    (line,) = [x for x in text.splitlines() if x.startswith("exec ")]
    return options, shlex.split(line[len("exec ") :])


@pytest.mark.slow  # five child processes
def test_job_array_gathers_the_same_table(local, tmp_path_factory):
    """The slurm launcher's array script, simulated: each task a child process with only
    SLURM_ARRAY_TASK_ID set, task 1 killed at step 3 and restarted; a fresh data directory,
    prepared by whichever task comes first while the others wait."""
    workdir = tmp_path_factory.mktemp("array")
    data_dir = tmp_path_factory.mktemp("tfds_array")
    code, _, err = _run(_args(workdir, data_dir, "--launcher", "slurm", "--dry-run"))
    assert code == 0, err[-3000:]
    out = gather.table_dir(workdir, TABLE)
    options, argv = _sbatch(out / "array.sbatch")
    assert _array_indices(options["array"]) == [0, 1, 2, 3]
    assert argv[-2:] == ["--task-index", "$SLURM_ARRAY_TASK_ID"]
    child = [sys.executable, str(ROOT / "tests" / "reproduce_child.py"), *argv[2:-2]]

    def start(index: int, **env: str) -> subprocess.Popen:
        environ = {k: v for k, v in os.environ.items() if k not in cli.TASK_INDEX_ENV}
        environ.update(SLURM_ARRAY_TASK_ID=str(index), **env)
        return subprocess.Popen(
            child, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    procs = {i: start(i, **({"REPRODUCE_KILL_AT_STEP": "3"} if i == 1 else {})) for i in range(4)}
    logs = {i: p.communicate(timeout=900)[0] for i, p in procs.items()}
    codes = {i: p.returncode for i, p in procs.items()}
    assert codes == {0: 0, 1: -9, 2: 0, 3: 0}, {i: logs[i][-2000:] for i in codes}

    code, md, _ = _run(_args(workdir, data_dir, "--gather"))
    assert code == 0 and "Runs: 3 of 4 finished" in md and "## Missing runs (1)" in md
    assert (
        "| quickstart/unet_densenet121 | 1 | 1 | quickstart/unet_densenet121/fold_1 | started" in md
    )
    assert "| 1/2 |" in md  # the row says how many folds it holds
    # Resubmitting lists only the unfinished task.
    assert _run(_args(workdir, data_dir, "--launcher", "slurm", "--dry-run"))[0] == 0
    assert _sbatch(out / "array.sbatch")[0]["array"] == "1"

    restarted = start(1)
    log = restarted.communicate(timeout=900)[0]
    assert restarted.returncode == 0, log[-3000:]
    code, _, err = _run(_args(workdir, data_dir, "--gather"))
    assert code == 0, err[-3000:]
    assert _outputs(workdir) == _outputs(local[0])


def test_slurm_files(tmp_path, capsys):
    weights = tmp_path / "weights"
    argv = ["--table", "p1-table2", "--workdir", str(tmp_path / "w"), "--launcher", "slurm"]
    argv += ["--dry-run", "--max-parallel=10", "--partition=gpu", "--gpus=2"]
    argv += ["--sbatch-option=--account=abc", f"--weights-dir={weights}"]
    assert cli.main([*argv, "--config.batch_size=16"]) == 0
    out = tmp_path / "w" / "tables" / "p1-table2"
    assert "#SBATCH --array=0-119%10" in capsys.readouterr().out  # printed, not submitted
    options, command = _sbatch(out / "array.sbatch")
    assert options["array"] == "0-119%10" and options["gres"] == "gpu:2"
    assert options["partition"] == "gpu" and options["account"] == "abc"
    assert options["job-name"] == "qatacov-p1-table2" and "%a" in options["output"]
    assert command[1] == str(ROOT / "scripts" / "reproduce.py")
    assert command[-2:] == ["--task-index", "$SLURM_ARRAY_TASK_ID"]
    assert "--config.batch_size=16" in command and str(weights) in command
    assert "launch/train.sbatch" in (out / "array.sbatch").read_text()
    g_options, g_command = _sbatch(out / "gather.sbatch")
    assert g_command[-1] == "--gather" and "gres" not in g_options
    submit = (out / "submit.sh").read_text()
    assert "sbatch --parsable" in submit and '--dependency=afterok:"$array_id"' in submit
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_tasks"] == 120 and manifest["pending"] == list(range(120))
    assert manifest["tasks"][119] == {
        "index": 119,
        "configuration": "dla_resnet50",
        "config_file": "configs/dla_resnet50.py",
        "config_overrides": [],
        "fold": 4,
        "run_dir": "dla_resnet50/fold_4",
        "finished": False,
    }
    # Before any task: every configuration's config.json, with the overrides applied.
    stored = json.loads((tmp_path / "w" / "unetpp_incv3_frozen" / "config.json").read_text())
    assert stored["batch_size"] == 16 and stored["model"]["frozen"] is True
    assert stored["model"]["encoder_weights"] == str(weights / "inceptionv3")


def test_k8s_files(tmp_path):
    argv = ["--table", "p2-infection", "--workdir", str(tmp_path / "w"), "--launcher", "k8s"]
    argv += ["--dry-run", "--k8s-workdir=/shared/runs/p2", "--max-parallel=4"]
    assert cli.main([*argv, "--config.data.manual_dir=/shared/COVID-QU-Ex"]) == 0
    text = (tmp_path / "w" / "tables" / "p2-infection" / "job.yaml").read_text()
    try:
        import yaml
    except ImportError:  # the venv normally has it; keep the essentials checked anyway
        assert "completionMode: Indexed" in text and "completions: 75" in text
        assert "kind: Job" in text and "-gather" in text
        return
    task_job, gather_job = yaml.safe_load_all(text)
    assert task_job["kind"] == gather_job["kind"] == "Job"
    spec = task_job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == 75
    assert spec["parallelism"] == 4
    (container,) = spec["template"]["spec"]["containers"]
    command = container["command"]
    assert command[:2] == ["python", "scripts/reproduce.py"] and "--task-index" not in command
    assert command[command.index("--workdir") + 1] == "/shared/runs/p2"
    assert "--config.data.manual_dir=/shared/COVID-QU-Ex" in command
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    (g,) = gather_job["spec"]["template"]["spec"]["containers"]
    assert "--gather" in g["command"] and any(a.startswith("--wait=") for a in g["command"])
    assert gather_job["metadata"]["name"] == task_job["metadata"]["name"] + "-gather"
    assert "JOB_COMPLETION_INDEX" in text and "launch/train-k8s.yaml" in text


def test_submission_calls_sbatch_then_the_dependent_gather(tmp_path, monkeypatch, capsys):
    """Without --dry-run the files are submitted: stand-in sbatch / kubectl record it."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    for name, reply in (("sbatch", "4242;cluster"), ("kubectl", "job.batch/x created")):
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\necho "{reply}"\n')
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    base = ["--table", "p1-table6", "--workdir", str(tmp_path / "w")]
    assert cli.main([*base, "--launcher", "slurm"]) == 0
    assert cli.main([*base, "--launcher", "k8s"]) == 0
    lines = calls.read_text().splitlines()
    out = tmp_path / "w" / "tables" / "p1-table6"
    assert lines == [
        f"sbatch --parsable {out / 'array.sbatch'}",
        f"sbatch --parsable --dependency=afterok:4242 {out / 'gather.sbatch'}",
        f"kubectl apply -f {out / 'job.yaml'}",
    ]
    assert "4242" in capsys.readouterr().out


def test_gather_lists_missing_runs_and_counts_parameters_from_shapes(tmp_path):
    code, md, err = _run(_args(tmp_path / "w", tmp_path / "tfds", "--gather"))
    assert code == 0, err[-3000:]
    assert "Runs: 0 of 4 finished" in md and "## Missing runs (4)" in md
    assert md.count("| not started |") == 4 and "| 0/2 |" in md
    table_json = gather.table_dir(tmp_path / "w", TABLE) / "table.json"
    rows = json.loads(table_json.read_text())["rows"]
    assert rows[0]["params"]["source"] == "eval_shape" and rows[0]["params"]["trainable"] > 0
    assert rows[0]["cells"]["pixel_f1"]["ours"] is None
    cached = json.loads((tmp_path / "w" / "tables" / "params.json").read_text())
    counts = sorted([r["params"]["trainable"], r["params"]["non_trainable"]] for r in rows)
    assert sorted(cached.values()) == counts


def test_paper_values_are_in_the_docs():
    """Every printed value of every table stands, with its configuration, on one line of
    docs/reproduce.md (per level for Table 6, whose levels share a configuration)."""
    lines = (ROOT / "docs" / "reproduce.md").read_text().splitlines()
    checked = 0
    for table in tables.TABLES.values():
        for name, values in table.paper.items():
            for level in ("pixel", "detection"):
                want = [f"{v:.2f}" for k, v in values.items() if k.startswith(level)]
                want += [
                    f"{ci:.4f}"
                    for k, ci in table.paper_ci.get(name, {}).items()
                    if k.startswith(level)
                ]
                if want:
                    assert any(f"`{name}`" in x and all(w in x for w in want) for x in lines), (
                        table.name,
                        name,
                        want,
                    )
                    checked += len(want)
        for name, conf in table.paper_confusion.items():
            want = [f"{conf[k]:,}" for k in ("tn", "fp", "fn", "tp")]
            assert any(f"`{name}`" in x and all(w in x for w in want) for x in lines), name
            checked += 4
    assert checked == 24 * 7 + 24 * 12 + 2 * 4 + 12 + 4 + 2 + 6 + 3
    assert paper_values.TABLE3["unet_densenet121"]["detection_sensitivity"] == 98.37


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--workdir", "w", "--launcher", "local"], "--table is required"),
        (["--table", "nope", "--workdir", "w"], "--table"),
        (["--table", "quickstart", "--workdir", "w"], "choose --launcher"),
        (["--table", "quickstart", "--workdir", "w", "--task-index", "4"], "out of range"),
        (["--table", "quickstart", "--workdir", "w", "--gather", "--launcher", "local"], "one of"),
        (["--table", "quickstart", "--workdir", "w", "--config", "x.py"], "--config"),
        (["--table", "quickstart", "--workdir", "w", "--gather", "--config.nope=1"], "config.nope"),
    ],
)
def test_refusals(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name in cli.TASK_INDEX_ENV:
        monkeypatch.delenv(name, raising=False)
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_array_spec():
    assert launchers.array_spec([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert launchers.array_spec([3]) == "3" and launchers.array_spec([]) == ""
