"""The training half of an annotation stage: models trained on the accepted masks write
their candidate masks for review (docs/annotation.md).

Stage I (`folds=K`, paper 1 Fig. 4 top): each configuration is cross-validated over the
accepted masks (`training.cross_validation.cross_validate`), and every image gets the
prediction of the fold model that never saw it. Stage II (`pool=DIR`, Fig. 4 bottom): each
configuration is trained on every accepted mask (`config.data.train_on_all`) and predicts
every X-ray of the pool. Layout of the work directory:

    WORKDIR/stage.json                what the stage is (kept, checked on a rerun)
    WORKDIR/data/<fingerprint>/       the accepted masks prepared as a TFDS dataset
    WORKDIR/runs/<model>/fold_k/      Stage I run directories (runs/<model>/ is the CV dir)
    WORKDIR/runs/<model>/all/         Stage II run directories
    .../splits.json                   the ids the run trained, validated and was tested on
                                      (`training.splits`, written by the training loop) and
                                      the image keys whose candidates it wrote (`predicted`)
    WORKDIR/candidates/               the candidate store (`annotation.candidates`)
    WORKDIR/summary.{json,md}         each configuration's Dice

A rerun resumes: finished runs are kept, an interrupted one resumes from its checkpoint,
candidates already written are not predicted again. The work directory is locked.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from qatacov_jax.annotation import layout
from qatacov_jax.annotation.candidates import RESERVED, CandidateWriter, dice, read_mask
from qatacov_jax.data import imageio
from qatacov_jax.inference.predictor import Predictor
from qatacov_jax.inference.runs import load_models
from qatacov_jax.runtime import locking
from qatacov_jax.runtime.files import write_json, write_text
from qatacov_jax.runtime.sharding import make_mesh
from qatacov_jax.training import rundir, splits
from qatacov_jax.training.cross_validation import cross_validate
from qatacov_jax.training.loop import train_and_evaluate

log = logging.getLogger(__name__)

STAGE_FILE = "stage.json"


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One stage.

    Attributes:
      masks_dir: the accepted masks (an annotation folder; `layout.read_masks`).
      target: `infection` or `lung`.
      workdir: the stage's work directory.
      configs: candidate name -> training config (overrides already applied).
      folds: Stage I: K of the cross-validation; None for Stage II.
      pool: Stage II: the folder of X-rays to propose masks for; None for Stage I.
      threshold: probability at or above which a candidate mask pixel is on.
      batch_per_device: images per device in one prediction call.
      config_files: candidate name -> the file its config came from (recorded).
    """

    masks_dir: Path
    target: str
    workdir: Path
    configs: Mapping[str, ml_collections.ConfigDict]
    folds: int | None = None
    pool: Path | None = None
    threshold: float = 0.5
    batch_per_device: int = 4
    config_files: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def stage(self) -> str:
        return "I" if self.folds is not None else "II"


def check_spec(spec: StageSpec) -> None:
    """Refuses a spec before anything is written (ValueError naming the fix)."""
    if (spec.folds is None) == (spec.pool is None):
        raise ValueError("give --folds K (Stage I) or --pool DIR (Stage II), not both or none")
    if spec.folds is not None and spec.folds < 2:
        raise ValueError(f"--folds must be at least 2, got {spec.folds}")
    if not spec.configs:
        raise ValueError("give at least one configuration file")
    bad = [n for n in spec.configs if n in RESERVED]
    if bad:
        raise ValueError(f"configuration names {bad} are reserved ({RESERVED}); rename the files")
    layout.check_target(spec.target)
    if not 0.0 < spec.threshold <= 1.0:
        raise ValueError(f"--threshold must be in (0, 1], got {spec.threshold}")


def stage_config(
    config: ml_collections.ConfigDict, spec: StageSpec, data_dir: Path
) -> ml_collections.ConfigDict:
    """`config` reading the accepted masks: the builder of the target with the mask folder
    as its manual directory, prepared under `data_dir`; Stage I with K folds, Stage II on
    every mask (`config.data.train_on_all`, no validation hold-out)."""
    cfg = ml_collections.ConfigDict(config.to_dict())
    cfg.data.dataset, cfg.data.target = layout.DATASETS[spec.target]
    cfg.data.manual_dir = str(Path(spec.masks_dir).absolute())
    cfg.data.data_dir = str(data_dir.absolute())
    cfg.data.control_dirs = ()
    if spec.folds is not None:
        cfg.data.num_folds = int(spec.folds)
    else:
        cfg.fold = None
        cfg.data.train_on_all = True
        cfg.data.validation_fraction = 0.0
    return cfg


def key_of(record_id: str) -> str:
    """The image key of a `splits.json` id (`train/covid_3.png`, `train/COVID-19/x.png`)."""
    return Path(record_id).stem


def run_record(run_dir: Path, cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """The run's `splits.json` (the training loop writes it before the first step: the ids
    it trains, validates and is tested on); written here for a run made before that."""
    if not (run_dir / splits.SPLITS_FILE).is_file():
        splits.write_or_check(run_dir, cfg, rundir.config_fold(cfg))
    return splits.read(run_dir)


def _finished(run_dir: Path, cfg: ml_collections.ConfigDict) -> dict[str, Any] | None:
    path = run_dir / rundir.RESULTS_FILE
    if not path.is_file():
        return None
    results = json.loads(path.read_text())
    return results if results.get("epochs") == int(cfg.num_epochs) else None


def _check_stage_file(spec: StageSpec, fp: str, sources: Mapping[str, str]) -> None:
    """Writes `stage.json`, or refuses a rerun whose stage, target, masks or pool differ
    (their candidates would mix)."""
    now = {
        "stage": spec.stage,
        "target": spec.target,
        "masks": str(Path(spec.masks_dir).absolute()),
        "fingerprint": fp,
        "folds": spec.folds,
        "pool": None if spec.pool is None else str(Path(spec.pool).absolute()),
        "models": sorted(spec.configs),
        "threshold": spec.threshold,
    }
    path = spec.workdir / STAGE_FILE
    if path.is_file():
        then = json.loads(path.read_text())
        diffs = [f"{k}: {then.get(k)!r} -> {v!r}" for k, v in now.items() if then.get(k) != v]
        if diffs:
            raise ValueError(
                f"--workdir {spec.workdir} holds another stage ({'; '.join(diffs)}); the masks "
                "or settings changed since it started. Use a new --workdir."
            )
    write_json(path, {**now, "images": len(sources)})


def predict_run(
    writer: CandidateWriter,
    name: str,
    run_dir: Path,
    keys: list[str],
    paths: Mapping[str, str],
    batch_per_device: int,
) -> None:
    """Writes `name`'s candidates of `keys` from the model of `run_dir` (those already on
    disk are skipped), batched over every device."""
    todo = [k for k in keys if not writer.has(k, name)]
    if not todo:
        return
    loaded = load_models({name: run_dir})
    mesh = make_mesh()
    batch = mesh.devices.size * max(1, batch_per_device)
    predictor = Predictor(loaded.models, loaded.preprocessing, loaded.sizes, mesh, batch_size=batch)
    for start in range(0, len(todo), batch):
        chunk = todo[start : start + batch]
        xrays = [imageio.read_xray(paths[k]) for k in chunk]
        for key, xray, maps in zip(chunk, xrays, predictor.predict_batch(xrays), strict=True):
            writer.write_image(key, xray)
            writer.write(key, name, maps[name])
        log.info("%s (%s): candidates %d/%d", name, run_dir.name, start + len(chunk), len(todo))


def run_stage(spec: StageSpec) -> dict[str, Any]:
    """Trains every configuration and writes the candidate store and the summary.

    Returns:
      The summary (`WORKDIR/summary.json`): per model its Dice and the candidate store.

    Raises:
      ValueError, FileNotFoundError: a bad spec or mask folder; nothing written.
      DirectoryLockedError: another process works in the directory.
    """
    check_spec(spec)
    entries = layout.read_masks(spec.masks_dir, spec.target)
    if spec.target == "infection" and (Path(spec.masks_dir) / "controls").is_dir():
        raise ValueError(
            f"{spec.masks_dir}/controls holds X-rays an earlier version filed as 'no "
            "infection' (as controls); start the review server on the folder once (it "
            "converts them to COVID-19 X-rays with an empty mask) or move them away."
        )
    missing = [k for k, e in entries.items() if e.image is None]
    if missing:
        raise FileNotFoundError(f"{spec.masks_dir}: masks without their X-ray, e.g. {missing[0]}")
    workdir = Path(spec.workdir).absolute()
    spec = dataclasses.replace(spec, workdir=workdir)
    with locking.run_dir_lock(workdir, purpose="annotation stage"):
        fp = layout.fingerprint(entries)
        if spec.folds is not None:
            sources = {k: str(e.image) for k, e in entries.items()}
        else:
            pool = layout.xray_folder(spec.pool)
            sources = {k: str(p) for k, p in pool.items() if k not in entries}
            if len(sources) < len(pool):
                log.info("%d pool X-rays already have a mask; left out", len(pool) - len(sources))
        _check_stage_file(spec, fp, sources)
        writer = CandidateWriter(
            workdir / "candidates", stage=spec.stage, target=spec.target, threshold=spec.threshold
        )
        plan: dict[str, dict[str, tuple[str, int | None]]] = {k: {} for k in sources}
        models: dict[str, dict[str, Any]] = {}
        for name, config in spec.configs.items():
            cfg = stage_config(config, spec, workdir / "data" / fp)
            train = _stage_one if spec.folds is not None else _stage_two
            models[name] = train(spec, name, cfg, writer, sources, plan, entries)
        writer.finish(plan, sources=sources, models=models, extra={"masks": str(spec.masks_dir)})
        summary = {"stage": spec.stage, "target": spec.target, "models": models}
        write_json(workdir / "summary.json", summary)
        write_text(workdir / "summary.md", summary_table(summary))
        return summary


def _stage_one(spec, name, cfg, writer, sources, plan, entries) -> dict[str, Any]:
    """K-fold CV of one configuration; each held-out image predicted by its fold's model."""
    cv_dir = spec.workdir / "runs" / name
    results = cross_validate(cfg, cv_dir)
    scores = []
    for fold in range(int(spec.folds)):
        run_dir = cv_dir / f"fold_{fold}"
        fold_cfg = ml_collections.ConfigDict(cfg.to_dict())
        fold_cfg.fold = fold
        # The images the fold's model was tested on, and so never trained on.
        held_out = [k for k in map(key_of, run_record(run_dir, fold_cfg)["test"]) if k in sources]
        predict_run(writer, name, run_dir, held_out, sources, spec.batch_per_device)
        splits.add_fields(run_dir, predicted=sorted(held_out), predicted_from="test")
        rel = run_dir.relative_to(spec.workdir).as_posix()
        for key in held_out:
            plan[key][name] = (rel, fold)
            cand = read_mask(writer.files(key, name)[0])
            ref = read_mask(entries[key].mask)
            scores.append(dice(cand, ref) if cand.shape == ref.shape else float("nan"))
    mean, std = results["mean"], results["std"]
    return {
        "config": spec.config_files.get(name),
        "cv_pixel_f1_mean": mean.get("pixel_f1"),
        "cv_pixel_f1_std": std.get("pixel_f1"),
        "oof_image_dice_mean": float(np.nanmean(scores)) if scores else None,
        "images": len(scores),
    }


def _stage_two(spec, name, cfg, writer, sources, plan, entries) -> dict[str, Any]:
    """One configuration trained on every accepted mask; every pool X-ray predicted."""
    run_dir = spec.workdir / "runs" / name / "all"
    results = _finished(run_dir, cfg) or train_and_evaluate(cfg, run_dir)
    keys = list(sources)
    run_record(run_dir, cfg)
    predict_run(writer, name, run_dir, keys, sources, spec.batch_per_device)
    splits.add_fields(run_dir, predicted=sorted(keys), predicted_from="pool")
    rel = run_dir.relative_to(spec.workdir).as_posix()
    for key in keys:
        plan[key][name] = (rel, None)
    final = results.get("final") or {}
    return {
        "config": spec.config_files.get(name),
        "train_fit_pixel_f1": final.get("pixel_f1"),
        "trained_on": len(entries),
        "images": len(keys),
    }


def summary_table(summary: Mapping[str, Any]) -> str:
    """Markdown: one row per configuration."""
    if summary["stage"] == "I":
        head = "| model | CV Dice (pixel F1), mean ± std | out-of-fold Dice per image | images |"
        rows = [
            f"| {n} | {_f(m['cv_pixel_f1_mean'])} ± {_f(m['cv_pixel_f1_std'])} | "
            f"{_f(m['oof_image_dice_mean'])} | {m['images']} |"
            for n, m in summary["models"].items()
        ]
    else:
        head = "| model | training-fit Dice (not a test) | trained on | pool images |"
        rows = [
            f"| {n} | {_f(m['train_fit_pixel_f1'])} | {m['trained_on']} | {m['images']} |"
            for n, m in summary["models"].items()
        ]
    title = f"# Annotation stage {summary['stage']} ({summary['target']})\n\n"
    return title + "\n".join([head, "|---|---|---|---|", *rows]) + "\n"


def _f(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.4f}"
