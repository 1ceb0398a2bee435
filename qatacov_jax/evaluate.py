"""Evaluate a trained run, or every fold of a cross-validation run (`scripts/evaluate.py`).

For each run directory (`--workdir` of scripts/train.py, or `fold_k/` of a CV run) the model
of `checkpoints/best` is run over the held-out split with one jitted, data-parallel step that
returns only the sufficient statistics of the metrics (`metrics.batch_statistics`), so
memory does not grow with the number of test images. Outputs (default
`<run>/evaluation/<split>/`):

    metrics.json                pixel-level segmentation and sample-level detection metrics
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

import argparse
import functools
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from PIL import Image

from qatacov_jax.logs import setup_cli_logging
from qatacov_jax.metrics import (
    DEFAULT_NUM_BINS,
    DEFAULT_THRESHOLD,
    METRIC_NAMES,
    MetricAccumulator,
    batch_statistics,
    fold_average,
)
from qatacov_jax.preprocessing import Preprocessing
from qatacov_jax.sharding import replicate

log = logging.getLogger("qatacov_jax.evaluate")

OUTPUTS = (
    "metrics.json",
    "tables.md",
    "pr_roc_pixel.png",
    "pr_roc_detection.png",
    "confusion_detection.png",
    "confusion_pixel.png",
)
_LABELS = {
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "precision": "Precision",
    "f1": "F1-Score",
    "f2": "F2-Score",
    "accuracy": "Accuracy",
    "auc": "AUC",
    "iou": "IoU",
    "dsc": "DSC",
}


def make_stats_fn(
    model: nnx.Module,
    mesh: Mesh,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    num_bins: int = DEFAULT_NUM_BINS,
) -> Callable[[Mapping[str, jax.Array]], dict[str, jax.Array]]:
    """One jitted step: a sharded eval batch -> `batch_statistics` of the model's prediction.

    The model is split once and its state replicated; probabilities never leave the devices.

    Returns:
      stats(batch) for batches with `image` (B, H, W, 3) preprocessed, `mask` (B, H, W, 1),
      `label` (B,), `valid` (B,) (the keys of `data.eval_iterator`).
    """
    model.eval()
    graphdef, state = nnx.split(model)
    state = replicate(state, mesh)
    step = _stats_step(graphdef, float(threshold), int(num_bins))

    def stats(batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        return step(state, batch["image"], batch["mask"], batch["label"], batch["valid"])

    return stats


@functools.lru_cache(maxsize=8)
def _stats_step(graphdef: nnx.GraphDef, threshold: float, num_bins: int) -> Callable[..., Any]:
    # Cached on the (hashable) graph definition: the folds of a CV run share one model
    # structure, so evaluating all of them compiles once.
    @jax.jit
    def step(state, image, mask, label, valid):
        logits = nnx.merge(graphdef, state)(image)
        probs = jax.nn.sigmoid(logits.astype(jnp.float32))
        return batch_statistics(probs, mask, label, valid, threshold=threshold, num_bins=num_bins)

    return step


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
    pending = None
    for batch in batches:
        stats = stats_fn(batch)
        # Fetch the previous batch's counts while this one runs: the host never stalls the
        # devices, and only two small stat dicts are alive at a time.
        if pending is not None:
            acc.update(pending)
        pending = stats
        if time.time() - last > every_secs:
            last = time.time()
            done = acc.num_images
            of = f"/{total}" if total else ""
            log.info("evaluated %d%s images (%.1f images/s)", done, of, done / (last - t0))
    if pending is not None:
        acc.update(pending)
    return acc


# --------------------------------------------------------------------------- run dirs


def is_cv_run(path: Path) -> bool:
    return any((p / "config.json").exists() for p in path.glob("fold_*"))


def fold_dirs(path: Path) -> list[Path]:
    dirs = [p for p in path.glob("fold_*") if (p / "config.json").exists()]
    return sorted(
        dirs, key=lambda p: int(p.name.split("_")[-1]) if p.name.split("_")[-1].isdigit() else 0
    )


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
      split: 'eval' (the held-out fold / validation split) or 'test'; default the run's
        `config.eval_split`.
      data_dir: override of `config.data.data_dir` (the data moved since training).
      num_maps: also write infection maps of the first `num_maps` examples to `maps_dir`.

    Returns:
      (accumulator, info) where info names the model, fold and split.
    """
    from qatacov_jax import data
    from qatacov_jax.checkpoint import load_model
    from qatacov_jax.sharding import make_mesh

    model, config, prep = load_model(run_dir, which=which)
    if data_dir is not None:
        config.data.data_dir = data_dir
    split = split or config.get("eval_split", "eval")
    fold = None if config.get("fold") is None else int(config.fold)
    mesh = mesh or make_mesh()
    n_dev = mesh.devices.size
    bs = int(batch_size or config.get("batch_size", n_dev))
    bs = max(n_dev, bs // n_dev * n_dev)
    total = data.num_examples(config.data, fold=fold, split=split)
    log.info("Evaluating %s (fold %s, split %s, %d images)", run_dir, fold, split, total)
    batches = data.eval_iterator(
        config.data, fold=fold, split=split, global_batch_size=bs, preprocessing=prep, mesh=mesh
    )
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
    }
    return acc, info


def unpreprocess(prep: Preprocessing, images: np.ndarray) -> np.ndarray:
    """Inverse of `Preprocessing.__call__` for display: (..., 3) model input -> (..., 3) RGB
    in [0, 1] (every mode is a per-channel affine map, plus a channel flip for BGR)."""
    x = np.asarray(images, np.float32)
    if prep.mode == "tf":
        x = (x + 1.0) / 2.0
    else:
        x = (x * np.asarray(prep.std, np.float32) + np.asarray(prep.mean, np.float32)) / prep.scale
    if prep.channel_order == "BGR":
        x = x[..., ::-1]
    return np.clip(x, 0.0, 1.0)


def _upscale(img: np.ndarray, min_side: int = 256) -> np.ndarray:
    k = max(1, -(-min_side // min(img.shape[:2])))
    return np.repeat(np.repeat(img, k, axis=0), k, axis=1)


def example_maps(
    model: nnx.Module,
    prep: Preprocessing,
    mesh: Mesh,
    config: Any,
    fold: int | None,
    split: str,
    batch_size: int,
    num_maps: int,
    out_dir: Path,
    threshold: float,
) -> list[Path]:
    """Infection maps of the first `num_maps` examples of the split, as the paper's Fig. 5.

    Writes `<name>_map.png` (the infection map) and `<name>_panel.png` (CXR | ground truth
    painted the same way | infection map), upscaled (nearest) to at least 256 px high.
    """
    from qatacov_jax import data
    from qatacov_jax.infection_map import infection_map
    from qatacov_jax.inference import make_predict_fn

    names = data.example_filenames(config.data, fold=fold, split=split)
    predict = make_predict_fn(model, mesh)
    batches = data.eval_iterator(
        config.data,
        fold=fold,
        split=split,
        global_batch_size=batch_size,
        preprocessing=prep,
        mesh=mesh,
    )
    written: list[Path] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for batch in batches:
        probs = np.asarray(jax.device_get(predict(batch["image"])))[..., 0]
        images, masks, valid, index = (
            np.asarray(jax.device_get(batch[k])) for k in ("image", "mask", "valid", "index")
        )
        for i in np.nonzero(valid)[0]:
            if len(written) >= 2 * num_maps:
                break
            cxr = unpreprocess(prep, images[i])
            stem = Path(str(names[int(index[i])])).stem or f"example_{int(index[i])}"
            # The ground truth is painted like a map with probability 1 inside the mask, so
            # the two are compared colour for colour.
            truth = infection_map(cxr, masks[i, ..., 0] > 0.5, floor=0.5)
            pred = infection_map(cxr, probs[i])
            plain = infection_map(cxr, np.zeros_like(probs[i]))
            pad = np.full((cxr.shape[0], 2, 3), 255, np.uint8)
            panel = np.concatenate([plain, pad, truth, pad, pred], axis=1)
            for suffix, img in (("map", pred), ("panel", panel)):
                path = out_dir / f"{stem}_{suffix}.png"
                Image.fromarray(_upscale(img)).save(path)
                written.append(path)
        if len(written) >= 2 * num_maps:
            break
    close = getattr(batches, "close", None)
    if close is not None:
        close()
    log.info(
        "wrote %d example infection maps to %s (threshold %s)",
        len(written) // 2,
        out_dir,
        threshold,
    )
    return written


# ----------------------------------------------------------------------------- reports


def _pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{100 * x:.2f}"


def _model_cells(info: Mapping[str, Any]) -> list[str]:
    frozen = "✓" if info.get("frozen") else "×"
    return [str(info.get("model")), str(info.get("encoder")), frozen]


def markdown_tables(
    summary: Mapping[str, Any],
    info: Mapping[str, Any],
    per_fold: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]] = (),
) -> str:
    """Tables shaped like the paper's: 1 (test samples), 2 (pixel-level), 3 (detection with
    95% CI), 4 (detection confusion matrix); plus per-fold rows for CV runs."""
    det, pix = summary["detection"], summary["pixel"]
    lines = [
        f"# Evaluation: {info.get('model')} {info.get('encoder')} ({info.get('split')} split)",
        "",
    ]
    lines += [
        f"Threshold {summary['threshold']}; AUC from {summary['num_bins']} probability bins "
        f"(width {summary['auc_bin_width']:g}). 95% CI r = 1.96 sqrt(m(1-m)/N), N = positives "
        "(sensitivity), negatives (specificity), all samples (others).",
        "",
        "## Table 1: test samples",
        "",
    ]
    folds = [(f"fold {i.get('fold')}", s) for s, i in per_fold]
    cols = [*(name for name, _ in folds), "total"]
    lines += ["| Data | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    all_rows = [*(s for _, s in folds), summary]
    for label, key in (("COVID-19", "pos"), ("Control", "neg"), ("Total", "all")):
        cells = []
        for s in all_rows:
            c = s["detection"]["confusion"]
            n = {"pos": c["tp"] + c["fn"], "neg": c["tn"] + c["fp"]}
            n["all"] = n["pos"] + n["neg"]
            cells.append(f"{n[key]:,}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    seg_names = [
        "sensitivity",
        "specificity",
        "precision",
        "f1",
        "f2",
        "accuracy",
        "auc",
        "iou",
        "dsc",
    ]
    head = "| Model | Encoder | Frozen | " + " | ".join(_LABELS[n] for n in seg_names) + " |"
    sep = "|---" * (3 + len(seg_names)) + "|"
    lines += ["", "## Table 2: infected region segmentation (pixel level, %)", "", head, sep]
    lines.append(
        "| "
        + " | ".join(_model_cells(info) + [_pct(pix["metrics"][n]["value"]) for n in seg_names])
        + " |"
    )
    auc = pix["metrics"]["auc"]
    if math.isfinite(auc["value"]):
        lines += [
            "",
            f"Pixel AUC bin error: at most {100 * auc['bin_error']:.4f} percentage points.",
        ]

    det_names = ["sensitivity", "specificity", "precision", "f1", "f2", "accuracy"]
    lines += ["", "## Table 3: COVID-19 detection (%, ± 95% CI as a fraction)", ""]
    lines += ["| Model | Encoder | Frozen | " + " | ".join(_LABELS[n] for n in det_names) + " |"]
    lines += ["|---" * (3 + len(det_names)) + "|"]
    cells = []
    for n in det_names:
        v = det["metrics"][n]
        ci = "" if not math.isfinite(v["ci95"]) else f" ± {v['ci95']:.4f}"
        cells.append(_pct(v["value"]) + ci)
    lines.append("| " + " | ".join(_model_cells(info) + cells) + " |")

    c = det["confusion"]
    title = "cumulative " if per_fold else ""
    lines += [
        "",
        f"## Table 4: {title}confusion matrix of COVID-19 detection",
        "",
        "| Ground truth \\ Predicted | Control | COVID-19 |",
        "|---|---|---|",
        f"| Control | {c['tn']:,} | {c['fp']:,} |",
        f"| COVID-19 | {c['fn']:,} | {c['tp']:,} |",
    ]
    if per_fold:
        lines += ["", "## Per fold (%)", ""]
        names = ["sensitivity", "specificity", "precision", "f1", "f2", "accuracy"]
        lines += ["| Fold | Level | " + " | ".join(_LABELS[n] for n in names) + " |"]
        lines += ["|---" * (2 + len(names)) + "|"]
        for s, i in per_fold:
            for level in ("pixel", "detection"):
                vals = [_pct(s[level]["metrics"][n]["value"]) for n in names]
                lines.append(f"| {i.get('fold')} | {level} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


def check_outputs_free(out_dir: Path, overwrite: bool, *, cv_folds: Sequence[str] = ()) -> None:
    """Refuses (FileExistsError naming the file) to replace earlier results without overwrite."""
    if overwrite:
        return
    for sub in ["", *cv_folds]:
        for name in (*OUTPUTS, "maps"):
            p = out_dir / sub / name
            if p.exists() and not (p.is_dir() and not any(p.iterdir())):
                raise FileExistsError(
                    f"{p} already exists; refusing to overwrite earlier evaluation results. "
                    "Pass --overwrite or choose another --out."
                )


def write_outputs(
    out_dir: Path,
    acc: MetricAccumulator,
    info: Mapping[str, Any],
    per_fold: Sequence[tuple[MetricAccumulator, Mapping[str, Any]]] = (),
) -> dict[str, Any]:
    """Writes metrics.json, tables.md and the figures for one (possibly cumulative) result."""
    from qatacov_jax import plots

    out_dir.mkdir(parents=True, exist_ok=True)
    summary = acc.summary()
    fold_summaries = [(a.summary(), i) for a, i in per_fold]
    result: dict[str, Any] = {**summary, "info": dict(info), "state": acc.to_dict()}
    if per_fold:
        result["folds"] = [{"info": dict(i), **s} for s, i in fold_summaries]
        result["fold_average"] = fold_average([s for s, _ in fold_summaries])
    tmp = out_dir / "metrics.json.tmp"
    tmp.write_text(json.dumps(_json_safe(result), indent=2))
    tmp.replace(out_dir / "metrics.json")
    (out_dir / "tables.md").write_text(markdown_tables(summary, info, fold_summaries))

    name = f"{info.get('model')} {info.get('encoder')}"
    for level, key in (("pixel", "pixel"), ("detection", "sample")):
        curves = {name: acc.curves(key)}
        aucs = {name: summary[level]["metrics"]["auc"]["value"]}
        if per_fold:
            for a, i in per_fold:
                label = f"fold {i.get('fold')}"
                curves[label] = a.curves(key)
                aucs[label] = a.summary()[level]["metrics"]["auc"]["value"]
        plots.plot_pr_roc(
            curves, out_dir / f"pr_roc_{level}.png", title=f"{name}: {level}", aucs=aucs
        )
    plots.plot_confusion(
        acc.sample, out_dir / "confusion_detection.png", title=f"{name}: detection"
    )
    plots.plot_confusion(
        acc.pixel,
        out_dir / "confusion_pixel.png",
        labels=("Background", "Infection"),
        title=f"{name}: pixels",
    )
    return result


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
    if out_dir is None:
        from qatacov_jax.checkpoint import read_config

        split = kwargs.get("split") or read_config(folds[0] if cv else path).get("eval_split")
        out_dir = path / "evaluation" / str(split or "eval")
    out = Path(out_dir)
    check_outputs_free(out, overwrite, cv_folds=[f.name for f in folds])
    if not cv:
        acc, info = evaluate_run(path, maps_dir=out / "maps", **kwargs)
        return _json_safe(write_outputs(out, acc, info))
    results = []
    for f in folds:
        acc, info = evaluate_run(f, maps_dir=out / f.name / "maps", **kwargs)
        write_outputs(out / f.name, acc, info)
        results.append((acc, info))
    total = results[0][0]
    for acc, _ in results[1:]:
        total = total.merge(acc)
    info = {**results[0][1], "fold": "all", "run_dir": str(path), "folds": [f.name for f in folds]}
    return _json_safe(write_outputs(out, total, info, per_fold=results))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/evaluate.py",
        description="Segmentation and COVID-19 detection metrics (95% CI), tables and curves.",
    )
    p.add_argument("run", type=Path, help="run directory, or a CV run holding fold_k/ runs")
    p.add_argument("--split", default=None, help="'eval' or 'test' (default: the run's eval_split)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    p.add_argument(
        "--num-bins",
        type=int,
        default=DEFAULT_NUM_BINS,
        help="probability bins for AUC/curves (AUC bin width = 1/num_bins)",
    )
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--which", choices=("best", "latest"), default="best")
    p.add_argument("--data-dir", default=None, help="override config.data.data_dir")
    p.add_argument("--out", type=Path, default=None, help="output folder")
    p.add_argument(
        "--num-maps",
        type=int,
        default=8,
        help="write infection maps of this many test examples to <out>/maps",
    )
    p.add_argument("--overwrite", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_cli_logging()
    if not 0.0 < args.threshold <= 1.0:
        print(f"error: --threshold must be in (0, 1], got {args.threshold}", file=sys.stderr)
        return 2
    try:
        result = evaluate(
            args.run,
            out_dir=args.out,
            overwrite=args.overwrite,
            split=args.split,
            threshold=args.threshold,
            num_bins=args.num_bins,
            batch_size=args.batch_size,
            which=args.which,
            data_dir=args.data_dir,
            num_maps=args.num_maps,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    det = result["detection"]["metrics"]
    pix = result["pixel"]["metrics"]
    print(
        "pixel F1 {:.2f}%  detection sensitivity {:.2f}%  specificity {:.2f}%".format(
            100 * (pix["f1"]["value"] or 0),
            100 * (det["sensitivity"]["value"] or 0),
            100 * (det["specificity"]["value"] or 0),
        )
    )
    return 0


__all__ = ["METRIC_NAMES", "accumulate", "evaluate", "evaluate_run", "main", "make_stats_fn"]
