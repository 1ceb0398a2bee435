"""`scripts/annotation_stage.py CONFIG... --masks DIR --workdir W (--folds K | --pool DIR)`:
one annotation stage's training and candidates (`annotation.stage`)."""

from __future__ import annotations

import ast
import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections
from absl import flags

from qatacov_jax.cli.common import UsageError, parse_command, positive, run_main

log = logging.getLogger(__name__)

PROG = "scripts/annotation_stage.py"
DOC = """Trains candidate models on the accepted masks and writes their masks for review
(docs/annotation.md).

Stage I: K-fold cross-validation of each configuration; every image gets the mask of the
fold model that never saw it:

    python scripts/annotation_stage.py configs/unet_densenet121.py configs/unetpp_densenet121.py \\
        configs/dla_densenet121.py --masks MANUAL_MASKS --folds 5 --workdir runs/stage1

Stage II: each configuration trained on every accepted mask; masks for every pool X-ray:

    python scripts/annotation_stage.py CONFIG... --masks STAGE1_OUT --pool XRAYS \\
        --workdir runs/stage2

`--config.X=Y` overrides a field of every configuration (e.g. `--config.num_epochs=20`,
`--config.data.image_size=64`). `--target lung` reads COVID-QU-Ex lung masks. Then review:
`python scripts/serve.py --review WORKDIR/candidates --annotations OUT`. A rerun of the same
command resumes (finished runs and written candidates are kept)."""


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_string(
        "masks", None, "accepted masks: an annotation folder (builder layout)", flag_values=fv
    )
    flags.DEFINE_string("workdir", None, "the stage's work directory", flag_values=fv)
    flags.DEFINE_enum("target", "infection", ["infection", "lung"], "mask kind", flag_values=fv)
    flags.DEFINE_integer("folds", None, "Stage I: K of the cross-validation", flag_values=fv)
    flags.DEFINE_string(
        "pool", None, "Stage II: folder of X-rays to propose masks for", flag_values=fv
    )
    flags.DEFINE_float("threshold", 0.5, "probability of a candidate mask pixel", flag_values=fv)
    flags.DEFINE_integer(
        "batch-per-device", 4, "images per device in one prediction call", flag_values=fv
    )


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Takes `--config.<path>=<value>` (or `--config.<path> <value>`) out of `argv`."""
    rest, overrides = [], []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--config."):
            name, eq, value = arg[len("--config.") :].partition("=")
            if not eq:
                if i + 1 >= len(args):
                    raise UsageError(f"{arg} needs a value (--config.{name}=VALUE)")
                value, i = args[i + 1], i + 1
            overrides.append((name, value))
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def parse_value(text: str) -> Any:
    """A Python literal (`3`, `1e-4`, `True`, `None`, `("a",)`), else the text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_override(config: ml_collections.ConfigDict, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = config
    try:
        for part in parents:
            node = node[part]
        if leaf not in node:
            raise KeyError(leaf)
        node[leaf] = value
    except (KeyError, AttributeError) as e:
        raise UsageError(f"--config.{path}: no such setting ({e})") from None
    except TypeError as e:
        raise UsageError(f"--config.{path}={value!r}: {e}") from None


def load_config(path: str) -> ml_collections.ConfigDict:
    """`get_config()` of a config file (configs/*.py)."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"configuration file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"_stage_config_{file.stem}", file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        return module.get_config()
    except Exception as e:  # noqa: BLE001 - any error in a config file is the user's to fix
        raise UsageError(f"cannot load {path}: {type(e).__name__}: {e}") from None


def model_names(paths: Sequence[str]) -> list[str]:
    """Candidate names: the config files' stems, made unique with _2, _3..."""
    names: list[str] = []
    for p in paths:
        base = name = Path(p).stem
        n = 2
        while name in names:
            name, n = f"{base}_{n}", n + 1
        names.append(name)
    return names


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; 0 done, 2 refused, 74 disk full, 75 interrupted (rerun to resume)."""

    def body() -> int:
        rest, overrides = split_overrides(argv or [])
        fv, files = parse_command(_define, rest, PROG, DOC)
        v = lambda name: fv[name].value  # noqa: E731 - dashed flag names need item access
        for name in ("masks", "workdir"):
            if v(name) is None:
                raise UsageError(f"--{name} is required")
        if not files:
            raise UsageError("give one or more configuration files (configs/*.py)")
        positive("batch-per-device", v("batch-per-device"))
        configs = {}
        for name, path in zip(model_names(files), files, strict=True):
            config = load_config(path)
            for key, value in overrides:
                apply_override(config, key, parse_value(value))
            configs[name] = config
        # After the flags are checked: the training code loads TensorFlow (seconds), which
        # --help and a refused command line should not wait for.
        from qatacov_jax.annotation.stage import StageSpec, run_stage, summary_table

        spec = StageSpec(
            masks_dir=Path(v("masks")),
            target=v("target"),
            workdir=Path(v("workdir")),
            configs=configs,
            folds=v("folds"),
            pool=None if v("pool") is None else Path(v("pool")),
            threshold=v("threshold"),
            batch_per_device=v("batch-per-device"),
            config_files=dict(zip(configs, files, strict=True)),
        )
        summary = run_stage(spec)
        print(summary_table(summary))
        log.info("candidates in %s; review them with scripts/serve.py --review", spec.workdir)
        return 0

    return run_main(body)
