"""Evaluate a trained run, or every fold of a cross-validation run (`scripts/evaluate.py`).

For each run directory (`--workdir` of scripts/train.py, or `fold_k/` of a CV run) the model
of `checkpoints/best` is run over the held-out split with one jitted, data-parallel step that
returns only the sufficient statistics of the metrics (`metrics.batch_statistics`), so
memory does not grow with the number of test images. Outputs (default
`<run>/evaluation/<split>/`):

    metrics.json                pixel-level segmentation and image-level detection metrics
                                with 95% CIs, confusion matrices, AUC with its bin error,
                                the raw counts/histograms (to merge later), fold averages
    tables.md                   Markdown tables shaped like the paper's Tables 1-4
    maps/                       infection maps of the first --num-maps examples (<name>_map.png)
                                and panels CXR | ground truth | prediction (<name>_panel.png)
    pr_roc_pixel.png            pixel-level precision-recall and ROC curves
    pr_roc_detection.png        the same for detection (image score = max probability)
    confusion_detection.png     detection confusion matrix (cumulative over folds)
    confusion_pixel.png         pixel confusion matrix

For a CV run the per-fold outputs go to `fold_k/` below the output folder and the top level
holds the cumulative results (summed confusion matrices, as the paper's Table 4, with CIs
over all test samples as its Table 3) and the mean/std over folds.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh

from qatacov_jax import data
from qatacov_jax.data import protocols
from qatacov_jax.data.preprocessing import Preprocessing
from qatacov_jax.data.sources import selection_split
from qatacov_jax.evaluation.examples import example_maps
from qatacov_jax.evaluation.reports import check_outputs_free, write_outputs
from qatacov_jax.inference.runs import CorruptRunError, load_run
from qatacov_jax.metrics import (
    DEFAULT_NUM_BINS,
    DEFAULT_THRESHOLD,
    MetricAccumulator,
    shared_test_summary,
)
from qatacov_jax.models import CLASSIFIER_ARCH
from qatacov_jax.runtime import unfinished
from qatacov_jax.runtime.files import OutputExistsError, json_ready
from qatacov_jax.runtime.locking import run_dir_lock
from qatacov_jax.runtime.sharding import make_mesh, replicate
from qatacov_jax.training.rundir import config_fold, read_config
from qatacov_jax.training.steps import EVAL_KEYS, make_eval_step, pipelined

log = logging.getLogger(__name__)

TOOL = "scripts/evaluate.py"


def make_stats_fn(
    model: nnx.Module,
    mesh: Mesh,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    num_bins: int = DEFAULT_NUM_BINS,
) -> Callable[[Mapping[str, jax.Array]], dict[str, jax.Array]]:
    """One jitted step: a sharded eval batch -> `batch_statistics` of the model's prediction
    (`training.steps.make_eval_step` without a loss).

    The model is split once and its state replicated; probabilities never leave the devices.

    Returns:
      stats(batch) for batches with `image` (B, H, W, 3) preprocessed, `mask` (B, H, W, 1),
      `label` (B,), `valid` (B,) (the keys of `data.eval_iterator`).
    """
    model.eval()
    graphdef, state = nnx.split(model)
    state = replicate(state, mesh)
    step = make_eval_step(graphdef, None, mesh, float(threshold), int(num_bins))

    def stats(batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        return step(state, {k: batch[k] for k in EVAL_KEYS})

    return stats


def accumulate(
    stats_fn: Callable[[Mapping[str, jax.Array]], Mapping[str, jax.Array]],
    batches: Iterable[Mapping[str, jax.Array]],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    num_bins: int = DEFAULT_NUM_BINS,
    total: int | None = None,
    every_secs: float = 30.0,
) -> MetricAccumulator:
    """Runs `stats_fn` over all batches into a `MetricAccumulator`, logging progress."""
    acc = MetricAccumulator(threshold, num_bins)
    t0 = last = time.time()
    for _, stats in pipelined(stats_fn, batches):
        acc.update(stats)
        if time.time() - last > every_secs:
            last = time.time()
            done = acc.num_images
            of = f"/{total}" if total else ""
            log.info("evaluated %d%s images (%.1f images/s)", done, of, done / (last - t0))
    return acc


def split_batches(
    config: Any, split: str, batch_size: int | None, preprocessing: Preprocessing, mesh: Mesh
) -> tuple[data.ShardedIterator, int, int]:
    """One pass over a run's `split` (its data config and fold): (batches, images, batch size).

    The batch size defaults to the run's, rounded down to a multiple of the device count.
    """
    fold = config_fold(config)
    n_dev = mesh.devices.size
    bs = int(batch_size or config.get("batch_size", n_dev))
    bs = max(n_dev, bs // n_dev * n_dev)
    total = data.num_examples(config.data, fold=fold, split=split)
    batches = data.eval_iterator(
        config.data,
        fold=fold,
        split=split,
        global_batch_size=bs,
        preprocessing=preprocessing,
        mesh=mesh,
    )
    return batches, total, bs


def is_cv_run(path: Path) -> bool:
    return any((p / "config.json").exists() for p in path.glob("fold_*"))


def fold_dirs(path: Path) -> list[Path]:
    dirs = [p for p in path.glob("fold_*") if (p / "config.json").exists()]
    return sorted(
        dirs, key=lambda p: int(p.name.split("_")[-1]) if p.name.split("_")[-1].isdigit() else 0
    )


class SelectionSplitError(ValueError):
    """The asked split chose the checkpoint: its metrics would be optimistic."""


def run_selection_split(run_dir: Path, config: Any) -> str | None:
    """The split that picked the run's `checkpoints/best` (None: nothing picked it).

    results.json records it (`selection.split`); a run still training has no results.json
    and its config decides (`data.sources.selection_split`); results.json written before
    that record existed selected on its `eval_split` every epoch.
    """
    results = Path(run_dir) / "results.json"
    if results.exists():
        recorded = json.loads(results.read_text())
        if "selection" in recorded:
            return recorded["selection"]["split"]
        return recorded.get("eval_split", "eval")
    fold = config_fold(config)
    return selection_split(config.data, fold)


def default_split(run_dir: Path, config: Any) -> str:
    """The run's `eval_split`, or its test split where `eval_split` picked the model."""
    split = config.get("eval_split", "eval")
    return "test" if split == run_selection_split(run_dir, config) else split


def check_not_selection(run_dir: Path, config: Any, split: str, which: str) -> str | None:
    """Raises `SelectionSplitError` when `checkpoints/best` was chosen on `split`."""
    selection = run_selection_split(run_dir, config)
    if which == "best" and split == selection:
        raise SelectionSplitError(
            f"{run_dir}: checkpoints/best was chosen by {config.get('best_metric')} on the "
            f"'{split}' split, so its metrics there are optimistic and not reported. "
            "Evaluate the test split (--split test, or 'eval' = the held-out fold of a CV "
            "run), or pass --which latest for the final model (docs/method.md#model-selection)."
        )
    return selection


def evaluate_run(
    run_dir: Path,
    *,
    split: str | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    num_bins: int = DEFAULT_NUM_BINS,
    batch_size: int | None = None,
    which: str = "best",
    data_dir: str | None = None,
    mesh: Mesh | None = None,
    num_maps: int = 0,
    maps_dir: Path | None = None,
) -> tuple[MetricAccumulator, dict[str, Any]]:
    """Evaluates one run directory on its held-out split.

    Args:
      split: 'eval' (the held-out fold / validation split), 'validation' or 'test'; default
        the run's `config.eval_split` unless that split chose the checkpoint (then 'test').
        The split that chose `checkpoints/best` is refused (`SelectionSplitError`).
      data_dir: override of `config.data.data_dir` (the data moved since training).
      num_maps: also write infection maps of the first `num_maps` examples to `maps_dir`.

    Returns:
      (accumulator, info) where info names the model, fold and split.
    """
    model, config, prep = load_run(run_dir, which=which)
    if config.model.get("arch") == CLASSIFIER_ARCH:
        raise ValueError(
            f"{run_dir} is a classifier run (the activation-map baseline); it has no infection "
            "maps to evaluate. Its detection metrics are in results.json; compare its Grad-CAM "
            "maps with a segmenter's infection maps with scripts/compare_localization.py."
        )
    if data_dir is not None:
        config.data.data_dir = data_dir
    split = split or default_split(run_dir, config)
    selection = check_not_selection(run_dir, config, split, which)
    fold = config_fold(config)
    mesh = mesh or make_mesh()
    batches, total, bs = split_batches(config, split, batch_size, prep, mesh)
    log.info("Evaluating %s (fold %s, split %s, %d images)", run_dir, fold, split, total)
    stats_fn = make_stats_fn(model, mesh, threshold=threshold, num_bins=num_bins)
    acc = accumulate(stats_fn, batches, threshold=threshold, num_bins=num_bins, total=total)
    close = getattr(batches, "close", None)
    if close is not None:
        close()
    if num_maps > 0 and maps_dir is not None:
        example_maps(model, prep, mesh, config, fold, split, bs, num_maps, maps_dir, threshold)
    if acc.num_images != total:
        raise RuntimeError(
            f"Evaluated {acc.num_images} images of {run_dir} but the split holds {total}; "
            "the eval iterator and num_examples disagree."
        )
    m = config.model
    info = {
        "run_dir": str(run_dir),
        "model": m.get("arch"),
        "encoder": m.get("encoder"),
        "frozen": bool(m.get("frozen", False)),
        "fold": fold,
        "split": split,
        "dataset": config.data.get("dataset"),
        "target": config.data.get("target", "infection"),
        "checkpoint": which,
        "selection_split": selection,
    }
    return acc, info


def evaluate(
    path: str | Path,
    *,
    out_dir: str | Path | None = None,
    overwrite: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """Evaluates a run dir, or all folds of a CV run, and writes the reports.

    Args:
      path: run directory, or CV run directory holding `fold_k/` run directories.
      out_dir: where to write; default `<path>/evaluation/<split>`.
      overwrite: replace earlier evaluation outputs.
      **kwargs: forwarded to `evaluate_run` (split, threshold, num_bins, batch_size, which,
        data_dir, num_maps).

    Returns:
      The contents of metrics.json (top level).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a directory; pass a training run directory.")
    cv = is_cv_run(path)
    folds = fold_dirs(path) if cv else []
    if not cv and not (path / "config.json").exists():
        raise FileNotFoundError(
            f"{path} holds neither config.json nor fold_k/ run directories; pass the --workdir "
            "of scripts/train.py."
        )
    first = folds[0] if cv else path
    split = kwargs.get("split") or default_split(first, _config(first))
    kwargs["split"] = split
    for run in folds or [path]:  # refuse before anything is computed or written
        check_not_selection(run, _config(run), split, kwargs.get("which", "best"))
    if out_dir is None:
        out_dir = path / "evaluation" / str(split)
    out = Path(out_dir)
    names = [f.name for f in folds]
    settings = {"run": str(path.absolute()), "folds": names, **kwargs}
    _claim(out, overwrite, names, settings)
    # One writer per output folder (runtime/locking.py); the run itself is only read, so
    # evaluating while it trains is allowed.
    with run_dir_lock(out, purpose="evaluate", enabled=jax.process_index() == 0):
        keep = _claim(out, overwrite, names, settings)
        journal = unfinished.begin(out, TOOL, settings, keep)  # before the first output
        if not cv:
            acc, info = evaluate_run(path, maps_dir=out / "maps", **kwargs)
            result = json_ready(write_outputs(out, acc, info))
            journal.finish()
            return result
        results = []
        for f in folds:
            done = _finished_fold(out / f.name) if f.name in keep else None
            if done is None:
                acc, info = evaluate_run(f, maps_dir=out / f.name / "maps", **kwargs)
                write_outputs(out / f.name, acc, info)
                journal.record(f.name)
            else:
                log.info("%s: kept from the unfinished evaluation in %s", f.name, out)
                acc, info = done
            results.append((acc, info))
        total = results[0][0]
        for acc, _ in results[1:]:
            total = total.merge(acc)
        info = {**results[0][1], "fold": "all", "run_dir": str(path)}
        info["folds"] = names
        # Folds tested on the same images (protocol paper2, or --split test): the summed
        # counts hold each test image K times; its CIs must count it once.
        shared = all(
            protocols.tests_on_shared_split(_config(Path(i["run_dir"])).data, i["split"])
            for _, i in results
        )
        summary = shared_test_summary(total, len(results)) if shared else None
        result = json_ready(write_outputs(out, total, info, per_fold=results, summary=summary))
        journal.finish()
        return result


def _config(run_dir: Path) -> Any:
    """`read_config`, a damaged config.json named in one line (`CorruptRunError`)."""
    try:
        return read_config(run_dir)
    except ValueError as e:
        raise CorruptRunError(
            f"{Path(run_dir) / 'config.json'} is not valid JSON (truncated or edited?): {e}"
        ) from None


def _claim(
    out: Path, overwrite: bool, folds: list[str], settings: dict[str, Any]
) -> dict[str, Any]:
    """May `out` be written? Returns the folds of an unfinished evaluation of ours (its
    marker, `runtime.unfinished`) with the same settings that stay valid.

    Without a marker: `check_outputs_free` (earlier results need `overwrite`, and must be
    ours). With one: `overwrite` starts over; the same settings keep finished folds; other
    settings are refused. Temporary files of killed writes are removed.
    """
    earlier = unfinished.load(out, TOOL)
    if earlier is None:
        check_outputs_free(out, overwrite, cv_folds=folds)
        return {}
    if not overwrite and not unfinished.same_settings(earlier.settings, settings):
        raise OutputExistsError(
            f"{out} holds an unfinished evaluation with other settings; rerun it with the "
            "same options to finish it, or pass --overwrite to start over."
        )
    unfinished.remove_temporaries_under(out)
    return {} if overwrite else {k: v for k, v in earlier.done.items() if k in folds}


def _finished_fold(fold_out: Path) -> tuple[MetricAccumulator, dict[str, Any]] | None:
    """A fold's accumulator and info from the metrics.json an unfinished run wrote."""
    try:
        metrics = json.loads((fold_out / "metrics.json").read_text())
        return MetricAccumulator.from_dict(metrics["state"]), dict(metrics["info"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
