"""`scripts/reproduce.py --table NAME --workdir W [--config.X=Y ...]`: every (configuration,
fold) of a paper's table, launched here or on a cluster, then gathered into the paper's
layout beside its printed values (`qatacov_jax.reproduce`)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import ml_collections
from absl import flags

from qatacov_jax.cli.common import UsageError, parse_command, positive, run_main
from qatacov_jax.cli.train import config_and_workdir
from qatacov_jax.models import SMP
from qatacov_jax.reproduce import Configuration, Table, gather, launchers, tasks
from qatacov_jax.reproduce.tables import TABLES, get_table

log = logging.getLogger(__name__)

PROG = "scripts/reproduce.py"
REPO = Path(__file__).resolve().parents[2]
DOC = """Reproduces a table of the papers: trains every (configuration, fold) it holds, then
builds the table as the paper lays it out, our figures (95% CI) beside the printed ones.

    python scripts/reproduce.py --list
    python scripts/reproduce.py --table quickstart --workdir runs/quickstart_table --launcher local
    python scripts/reproduce.py --table p1-table2 --workdir runs/paper1 --launcher slurm \\
        --weights-dir weights --config.data.manual_dir=/data/QaTa-COV19 \\
        --config.data.control_dirs='("/data/rsna",)' [--dry-run]
    python scripts/reproduce.py --table p1-table2 --workdir runs/paper1 --gather

Modes: --launcher local (each run in turn, then gather), slurm (a job array + a gather job
depending on it), k8s (an indexed Job + a gather Job); --task-index I (one run: what a job
array element executes; without it, SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX gives I);
--gather (the table from whatever finished; missing runs are listed). Every run is an
ordinary run directory, WORKDIR/<configuration>/fold_<k>; finished runs are never redone and
interrupted ones resume, so any mode can be rerun. Tables that share configurations share
runs in one WORKDIR (p1-table2/3/4, p1-table6/7, p2-infection/p2-detection).

`--config.<field>=<value>` overrides apply to every configuration (data paths, batch size);
`--weights-dir DIR` sets each configuration's encoder weights to DIR/<encoder> (paper 1) or
DIR/smp_<encoder> (paper 2), as written by scripts/port_weights.py. See docs/reproduce.md.

Exit codes: 0 done, 1 some run diverged (local), 2 refused, 74 disk full, 75 stopped by a
signal after saving a checkpoint (rerun to resume)."""

TASK_INDEX_ENV = ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX")


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_boolean("list", False, "List the tables and exit.", flag_values=fv)
    flags.DEFINE_enum("table", None, sorted(TABLES), "The table to reproduce.", flag_values=fv)
    flags.DEFINE_string("workdir", None, "Holds the table's run directories.", flag_values=fv)
    flags.DEFINE_enum(
        "launcher", None, ["local", "slurm", "k8s"], "Where the runs execute.", flag_values=fv
    )
    flags.DEFINE_boolean("dry-run", False, "Write the job files, submit nothing.", flag_values=fv)
    flags.DEFINE_integer(
        "task-index", None, "Run only this task (a job array's element).", flag_values=fv
    )
    flags.DEFINE_boolean("gather", False, "Build the table from the finished runs.", flag_values=fv)
    flags.DEFINE_integer(
        "wait", 0, "--gather: wait up to this many seconds for unfinished runs.", flag_values=fv
    )
    flags.DEFINE_string(
        "weights-dir", None, "Encoder weights: DIR/<encoder> per configuration.", flag_values=fv
    )
    flags.DEFINE_integer("gpus", 1, "Cluster: GPUs per task (0: CPU only).", flag_values=fv)
    flags.DEFINE_integer("cpus", 8, "Cluster: CPU cores per task.", flag_values=fv)
    flags.DEFINE_string("time", "24:00:00", "SLURM: time limit per task.", flag_values=fv)
    flags.DEFINE_string("partition", None, "SLURM: partition.", flag_values=fv)
    flags.DEFINE_multi_string(
        "sbatch-option", [], "SLURM: extra #SBATCH option (repeatable).", flag_values=fv
    )
    flags.DEFINE_integer("max-parallel", None, "Cluster: tasks running at once.", flag_values=fv)
    flags.DEFINE_string(
        "image", "qatacov-jax:latest", "k8s: container image (project in /app).", flag_values=fv
    )
    flags.DEFINE_string(
        "volume-claim", "qatacov-shared", "k8s: PVC with runs and data.", flag_values=fv
    )
    flags.DEFINE_string("mount-path", "/shared", "k8s: where the pods mount it.", flag_values=fv)
    flags.DEFINE_string(
        "k8s-workdir",
        None,
        "k8s: the workdir as the pods see it (default: --workdir).",
        flag_values=fv,
    )


def _split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(this command's own flags, the `--config.<field>=<value>` overrides)."""
    own, overrides = [], []
    for arg in argv:
        if arg.startswith("--config."):
            if "=" not in arg:
                raise UsageError(f"{arg}: write config overrides as --config.<field>=<value>")
            overrides.append(arg)
        elif arg == "--config" or arg.startswith("--config="):
            raise UsageError("--config: each table names its config files; see --list")
        else:
            own.append(arg)
    return own, overrides


class ConfigLoader:
    """A configuration -> its config: the file, the table's and the configuration's
    overrides, then the command's (parsed as scripts/train.py parses them), then
    --weights-dir. Cached: a table reuses a configuration for each of its folds."""

    def __init__(self, table: Table, overrides: list[str], weights_dir: str | None):
        if weights_dir and any(o.startswith("--config.model.encoder_weights=") for o in overrides):
            raise UsageError("give --weights-dir or --config.model.encoder_weights, not both")
        self.table, self.overrides, self.weights_dir = table, overrides, weights_dir
        self._cache: dict[str, ml_collections.ConfigDict] = {}

    def __call__(self, configuration: Configuration) -> ml_collections.ConfigDict:
        if configuration.name not in self._cache:
            self._cache[configuration.name] = self._load(configuration)
        return self._cache[configuration.name]

    def _load(self, configuration: Configuration) -> ml_collections.ConfigDict:
        argv = [
            f"--config={REPO / configuration.config_file}",
            *self.table.overrides,
            *configuration.overrides,
            *self.overrides,
            "--workdir=unused",
        ]
        config = config_and_workdir(argv, PROG, DOC, "unused").config
        if self.weights_dir:
            smp = config.model.get("family") == SMP
            stem = f"smp_{config.model.encoder}" if smp else config.model.encoder
            config.model.encoder_weights = str(Path(self.weights_dir).absolute() / stem)
        return config


def _list() -> int:
    for table in TABLES.values():
        n, k = len(table.configurations), len(table.folds)
        folds = "on fixed splits" if table.folds == (None,) else f"x {k} folds"
        print(f"{table.name:14s} {table.source}: {table.title}")
        print(f"{'':14s} {n} configuration{'s' * (n > 1)} {folds} = {n * k} run{'s' * (n * k > 1)}")
    return 0


def _task_index(fv: flags.FlagValues) -> int | None:
    if fv["task-index"].value is not None:
        return fv["task-index"].value
    for name in TASK_INDEX_ENV:
        if os.environ.get(name, "").strip():
            try:
                return int(os.environ[name])
            except ValueError:
                raise UsageError(f"{name}={os.environ[name]!r} is not a task index") from None
    return None


def _run_one(table: Table, workdir: Path, index: int, load: ConfigLoader) -> int:
    all_tasks = table.tasks()
    if not 0 <= index < len(all_tasks):
        raise UsageError(
            f"task index {index} out of range: {table.name} has tasks 0-{len(all_tasks) - 1}"
        )
    task = all_tasks[index]
    log.info(
        "Task %d of %s: %s fold %s -> %s",
        index,
        table.name,
        task.configuration.name,
        task.fold,
        workdir / task.run_dir,
    )
    results, ran = tasks.run_task(task, load(task.configuration), workdir)
    log.info("%s: %s", "Done" if ran else "Finished earlier, kept", tasks.describe(results))
    return 0


def _gather(table: Table, workdir: Path, load: ConfigLoader, wait_s: int) -> int:
    if wait_s > 0:
        gather.wait_for_runs(table, workdir, wait_s)
    result = gather.gather(table, workdir, load=load)
    out = gather.table_dir(workdir, table)
    print((out / "table.md").read_text(), end="")
    log.info(
        "%d of %d runs finished; table.md, table.json and table.tex in %s",
        result["runs"]["finished"],
        result["runs"]["expected"],
        out,
    )
    return 0


def _base_args(table: Table, workdir: str, load: ConfigLoader) -> list[str]:
    """The flags every task and the gather job of a cluster launch repeat."""
    args = ["--table", table.name, "--workdir", workdir]
    if load.weights_dir:
        args += ["--weights-dir", load.weights_dir]
    return args + load.overrides


def _cluster_options(fv: flags.FlagValues) -> launchers.ClusterOptions:
    return launchers.ClusterOptions(
        gpus=fv["gpus"].value,
        cpus=positive("cpus", fv["cpus"].value),
        time=fv["time"].value,
        partition=fv["partition"].value,
        max_parallel=positive("max-parallel", fv["max-parallel"].value),
        sbatch_options=tuple(fv["sbatch-option"].value),
        image=fv["image"].value,
        volume_claim=fv["volume-claim"].value,
        mount_path=fv["mount-path"].value,
    )


def _launch(fv: flags.FlagValues, table: Table, workdir: Path, load: ConfigLoader) -> int:
    launcher, dry_run = fv.launcher, fv["dry-run"].value
    all_tasks = table.tasks()
    finished = tasks.plan(all_tasks, load, workdir, check=launcher != "k8s")
    pending = [t.index for t, done in zip(all_tasks, finished, strict=True) if not done]
    log.info(
        "%s: %d runs, %d finished, %d to run",
        table.name,
        len(all_tasks),
        len(all_tasks) - len(pending),
        len(pending),
    )
    if launcher == "k8s":
        pod_workdir = fv["k8s-workdir"].value or str(workdir)
        base = ["python", "scripts/reproduce.py", *_base_args(table, pod_workdir, load)]
    else:
        script = str(REPO / "scripts" / "reproduce.py")
        base = [sys.executable, script, *_base_args(table, str(workdir), load)]
    manifest = launchers.write_manifest(
        table,
        workdir,
        finished,
        launcher=launcher,
        task_command=base,
        gather_command=[*base, "--gather"],
    )
    log.info("Manifest: %s", manifest)
    if launcher == "local":
        if dry_run:
            print("\n".join(f"task {i}: {all_tasks[i].run_dir}" for i in pending))
            return 0
        _, diverged = tasks.run_all(all_tasks, load, workdir)
        _gather(table, workdir, load, 0)
        return 1 if diverged else 0
    options = _cluster_options(fv)
    if launcher == "slurm":
        written = launchers.slurm_files(
            table,
            workdir,
            pending,
            task_command=base,
            gather_command=[*base, "--gather"],
            cwd=Path.cwd(),
            options=options,
        )
        if dry_run and "array" in written:
            print(written["array"].read_text(), end="")
        for line in launchers.submit_slurm(written, dry_run=dry_run):
            print(line)
        return 0
    path = launchers.k8s_file(
        table, workdir, task_command=base, gather_command=[*base, "--gather"], options=options
    )
    if dry_run:
        print(path.read_text(), end="")
    for line in launchers.submit_k8s(path, dry_run=dry_run):
        print(line)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 done, 1 a run diverged, 2 refused)."""

    def body() -> int:
        own, overrides = _split_overrides(list(argv or []))
        fv, rest = parse_command(_define, own, PROG, DOC)
        if rest:
            raise UsageError(f"unexpected arguments {rest}")
        if fv.list:
            return _list()
        for name in ("table", "workdir"):
            if fv[name].value is None:
                raise UsageError(f"--{name} is required (--list names the tables)")
        table = get_table(fv.table)
        workdir = Path(fv.workdir).expanduser().absolute()
        load = ConfigLoader(table, overrides, fv["weights-dir"].value)
        modes = [
            m for m in ("launcher", "task-index", "gather") if fv[m].value not in (None, False)
        ]
        if len(modes) > 1:
            raise UsageError(f"choose one of --launcher, --task-index, --gather (got {modes})")
        if fv.gather:
            return _gather(table, workdir, load, fv.wait)
        if fv.launcher:
            return _launch(fv, table, workdir, load)
        index = _task_index(fv)
        if index is None:
            raise UsageError(
                "choose --launcher local|slurm|k8s, --gather, --task-index or --list "
                f"(no {' / '.join(TASK_INDEX_ENV)} in the environment either)"
            )
        return _run_one(table, workdir, index, load)

    return run_main(body)
