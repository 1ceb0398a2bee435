"""Launching a table's tasks on a cluster: a SLURM job array or a Kubernetes indexed Job,
each element running one task (`scripts/reproduce.py ... --task-index I`), plus a gather job.

Everything is written to `WORKDIR/tables/<table>/` first (manifest.json and the job files);
submitting is `sbatch` / `kubectl apply` on those files, skipped by `--dry-run`. Tasks are
resumable, so resubmitting after a failure or preemption reruns only what is unfinished:
the SLURM array lists just those indices.

    manifest.json   the table, its tasks (index, configuration, fold, run directory,
                    finished or not) and the commands
    array.sbatch    SLURM: one array task per unfinished (configuration, fold)
    gather.sbatch   SLURM: builds the table once the array succeeded (afterok dependency)
    submit.sh       SLURM: the two sbatch calls, with the dependency
    job.yaml        Kubernetes: the indexed Job (JOB_COMPLETION_INDEX) and the gather Job
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import re
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qatacov_jax.reproduce.gather import table_dir
from qatacov_jax.reproduce.tables import Table, Task
from qatacov_jax.runtime import files

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
WEEK_S = 7 * 24 * 3600


@dataclasses.dataclass(frozen=True)
class ClusterOptions:
    """Resources of one task and where the cluster finds the project."""

    gpus: int = 1  # per task (0: CPU only)
    cpus: int = 8  # per task: grain input workers and XLA threads
    time: str = "24:00:00"  # SLURM wall-clock limit per task
    partition: str | None = None
    max_parallel: int | None = None  # tasks running at once (SLURM %N, k8s parallelism)
    sbatch_options: tuple[str, ...] = ()  # extra `#SBATCH` options, e.g. "--account=abc"
    image: str = "qatacov-jax:latest"  # k8s: an image with this project installed, in /app
    volume_claim: str = "qatacov-shared"  # k8s: the PVC holding workdir and datasets
    mount_path: str = "/shared"
    wait_s: int = WEEK_S  # k8s gather Job: how long it waits for the tasks' runs


def array_spec(indices: Sequence[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8' (SLURM's --array syntax)."""
    ranges: list[list[int]] = []
    for i in sorted(set(indices)):
        if ranges and ranges[-1][1] == i - 1:
            ranges[-1][1] = i
        else:
            ranges.append([i, i])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def job_name(table: Table) -> str:
    """A name valid for SLURM and Kubernetes (lower-case letters, digits, '-')."""
    return "qatacov-" + re.sub(r"[^a-z0-9-]+", "-", table.name.lower()).strip("-")


def write_manifest(
    table: Table,
    workdir: Path,
    finished: Sequence[bool],
    *,
    launcher: str,
    task_command: Sequence[str],
    gather_command: Sequence[str],
) -> Path:
    """`WORKDIR/tables/<table>/manifest.json`: what each task runs, and what is done."""
    tasks = table.tasks()
    manifest = {
        "table": table.name,
        "title": table.title,
        "source": table.source,
        "launcher": launcher,
        "workdir": str(workdir),
        "written": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "num_tasks": len(tasks),
        "pending": [t.index for t, done in zip(tasks, finished, strict=True) if not done],
        "task_command": shlex.join(task_command) + " --task-index INDEX",
        "gather_command": shlex.join(gather_command),
        "tasks": [_task_entry(t, done) for t, done in zip(tasks, finished, strict=True)],
    }
    return files.write_json(table_dir(workdir, table) / MANIFEST, manifest)


def _task_entry(task: Task, finished: bool) -> dict[str, Any]:
    return {
        "index": task.index,
        "configuration": task.configuration.name,
        "config_file": task.configuration.config_file,
        "config_overrides": list(task.configuration.overrides),
        "fold": task.fold,
        "run_dir": task.run_dir,
        "finished": finished,
    }


def _command_line(command: Sequence[str], *extra: str) -> str:
    return " ".join([shlex.join(command), *extra])


def slurm_files(
    table: Table,
    workdir: Path,
    pending: Sequence[int],
    *,
    task_command: Sequence[str],
    gather_command: Sequence[str],
    cwd: Path,
    options: ClusterOptions,
) -> dict[str, Path]:
    """Writes array.sbatch (only when tasks are pending), gather.sbatch and submit.sh.

    The jobs start in `cwd` (the launch's working directory), so relative paths in the
    commands' overrides name the same files for the tasks as for the launch that checked
    them; the script path in the commands is absolute."""
    out = table_dir(workdir, table)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    name = job_name(table)
    common = []
    if options.partition:
        common.append(f"#SBATCH --partition={options.partition}")
    common += [f"#SBATCH {opt}" for opt in options.sbatch_options]
    written = {}
    if pending:
        throttle = f"%{options.max_parallel}" if options.max_parallel else ""
        resources = [f"#SBATCH --cpus-per-task={options.cpus}", f"#SBATCH --time={options.time}"]
        if options.gpus:
            resources.append(f"#SBATCH --gres=gpu:{options.gpus}")
        array = [
            "#!/usr/bin/env bash",
            f"# {table.source}: {table.title}",
            f"# The {len(pending)} unfinished of its {len(table.tasks())} tasks, one per "
            "(configuration, fold):",
            "# the array index is the task index of manifest.json (in this folder). A finished",
            "# run is skipped and an interrupted one resumes from its latest checkpoint, so",
            "# resubmitting (scripts/reproduce.py --launcher slurm again) is always safe.",
            "# A task is one process on the GPUs of one node. For multi-node runs, train them",
            "# with launch/train.sbatch (srun + QATACOV_DISTRIBUTED=1) into the same run",
            "# directories (WORKDIR/<configuration>/fold_<k>), then gather.",
            f"#SBATCH --job-name={name}",
            f"#SBATCH --array={array_spec(pending)}{throttle}",
            *resources,
            f"#SBATCH --output={logs}/%x-%A_%a.out",
            *common,
            "",
            "set -euo pipefail",
            f"cd {shlex.quote(str(cwd))}  # where the launch ran: relative paths mean the same",
            "exec " + _command_line(task_command, '--task-index "$SLURM_ARRAY_TASK_ID"'),
        ]
        written["array"] = files.write_text(out / "array.sbatch", "\n".join(array) + "\n")
    gather = [
        "#!/usr/bin/env bash",
        f"# Gathers {table.source} from its runs into {out}/table.{{md,json,tex}}.",
        "# submit.sh submits it with --dependency=afterok:<array job id>: it starts once every",
        "# array task succeeded (afterany would gather whatever finished, listing the rest).",
        f"#SBATCH --job-name={name}-gather",
        "#SBATCH --cpus-per-task=2",
        "#SBATCH --time=01:00:00",
        f"#SBATCH --output={logs}/%x-%j.out",
        *common,
        "",
        "set -euo pipefail",
        f"cd {shlex.quote(str(cwd))}",
        "exec " + _command_line(gather_command),
    ]
    written["gather"] = files.write_text(out / "gather.sbatch", "\n".join(gather) + "\n")
    submit = ["#!/usr/bin/env bash", "set -euo pipefail"]
    if pending:
        submit += [
            f"array_id=$(sbatch --parsable {shlex.quote(str(out / 'array.sbatch'))})",
            'array_id=${array_id%%;*}  # --parsable prints "id" or "id;cluster"',
            'sbatch --dependency=afterok:"$array_id" ' + shlex.quote(str(out / "gather.sbatch")),
        ]
    else:
        submit.append("sbatch " + shlex.quote(str(out / "gather.sbatch")))
    written["submit"] = files.write_text(out / "submit.sh", "\n".join(submit) + "\n")
    os.chmod(written["submit"], 0o755)
    return written


def submit_slurm(written: dict[str, Path], *, dry_run: bool) -> list[str]:
    """Submits the array, then the gather job depending on it. Returns the job ids (with
    `dry_run`, the commands it would run, printed)."""
    if dry_run:
        return [f"bash {shlex.quote(str(written['submit']))}  # dry run: not submitted"]
    ids = []
    dependency: list[str] = []
    if "array" in written:
        ids.append(_sbatch(["--parsable", str(written["array"])]))
        dependency = [f"--dependency=afterok:{ids[0]}"]
    ids.append(_sbatch(["--parsable", *dependency, str(written["gather"])]))
    return ids


def _sbatch(args: list[str]) -> str:
    out = subprocess.run(["sbatch", *args], capture_output=True, text=True, check=True)
    return out.stdout.strip().split(";")[0]


def _yaml_container(
    name: str, command: Sequence[str], options: ClusterOptions, gpus: int, cpus: int
) -> list[str]:
    """A pod template's container, indented for `_yaml_job` (JSON strings and lists are
    valid YAML scalars and sequences)."""
    lines = [
        f"- name: {name}",
        f"  image: {json.dumps(options.image)}",
        "  workingDir: /app",
        f"  command: {json.dumps(list(command))}",
        "  env:",
        "    - name: TFDS_DATA_DIR",
        f"      value: {json.dumps(options.mount_path + '/tensorflow_datasets')}",
        "  resources:",
        "    limits:",
        f"      cpu: {json.dumps(str(cpus))}",
        *([f"      nvidia.com/gpu: {gpus}"] if gpus else []),
        "  volumeMounts:",
        "    - name: shared",
        f"      mountPath: {json.dumps(options.mount_path)}",
    ]
    return ["        " + line for line in lines]


def _yaml_job(
    name: str, table: Table, spec: list[str], container: list[str], options: ClusterOptions
) -> list[str]:
    """A batch/v1 Job: `spec` lines (indented 2) and one container."""
    return [
        "apiVersion: batch/v1",
        "kind: Job",
        "metadata:",
        f"  name: {name}",
        "  labels:",
        "    app: qatacov-reproduce",
        f"    table: {json.dumps(table.name)}",
        "spec:",
        *spec,
        "  template:",
        "    metadata:",
        "      labels:",
        "        app: qatacov-reproduce",
        "    spec:",
        "      restartPolicy: Never",
        "      containers:",
        *container,
        "      volumes:",
        "        - name: shared",
        "          persistentVolumeClaim:",
        f"            claimName: {json.dumps(options.volume_claim)}",
    ]


def k8s_file(
    table: Table,
    workdir: Path,
    *,
    task_command: Sequence[str],
    gather_command: Sequence[str],
    options: ClusterOptions,
) -> Path:
    """Writes job.yaml: an indexed Job (one completion per task) and a gather Job that waits
    on the shared volume until every run finished (Kubernetes has no job dependencies)."""
    name, n = job_name(table), len(table.tasks())
    parallel = min(options.max_parallel or n, n)
    tasks = _yaml_job(
        name,
        table,
        [
            "  completionMode: Indexed  # each pod gets JOB_COMPLETION_INDEX = its task index",
            f"  completions: {n}",
            f"  parallelism: {parallel}",
            f"  backoffLimit: {n}  # a failed pod is retried; its run resumes from a checkpoint",
        ],
        _yaml_container("task", task_command, options, options.gpus, options.cpus),
        options,
    )
    gather = _yaml_job(
        f"{name}-gather",
        table,
        ["  backoffLimit: 0"],
        _yaml_container("gather", [*gather_command, f"--wait={options.wait_s}"], options, 0, 1),
        options,
    )
    header = [
        f"# {table.source}: {table.title}",
        f"# {n} tasks, one per (configuration, fold): scripts/reproduce.py reads its task index",
        "# from JOB_COMPLETION_INDEX. Finished runs are skipped, interrupted ones resume, so",
        "# after `kubectl delete job " + name + " " + name + "-gather` a re-apply reruns only",
        "# what is unfinished. The gather Job waits until every run finished (or --wait",
        "# seconds passed), then writes the table. Multi-host tasks: see launch/train-k8s.yaml.",
        "# The workdir and the prepared datasets must be on the shared volume.",
    ]
    text = "\n".join([*header, *tasks, "---", *gather]) + "\n"
    return files.write_text(table_dir(workdir, table) / "job.yaml", text)


def submit_k8s(path: Path, *, dry_run: bool) -> list[str]:
    """`kubectl apply -f job.yaml` (with `dry_run`, only the command)."""
    command = ["kubectl", "apply", "-f", str(path)]
    if dry_run:
        return [shlex.join(command) + "  # dry run: not submitted"]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return [line for line in out.stdout.splitlines() if line.strip()]
