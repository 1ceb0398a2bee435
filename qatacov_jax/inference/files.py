"""X-ray files in -> infection maps, masks, COVID-19 decision and severity out (`scripts/infer.py`).

Inputs are files or folders (searched recursively) of PNG (8/16-bit), JPEG, BMP/TIFF and
DICOM, of any size. Per image we write, mirroring the input's relative path under `--out`:

    <name>_map.png        infection map at the image's original resolution (infection_map.py)
    <name>_mask.png       binary infection mask (0/255, probability >= --threshold)
    <name>_lung_mask.png  binary lung mask (only with --lung-checkpoint)

and for the whole run `report.csv` and `report.json`: per file the COVID-19 decision (any
pixel >= threshold, the paper's rule), the maximum probability, the infected area as % of the
image and, with a lung model, as % of the lung area with a severity grade (severity.py).

Failure policy: a file that cannot be read is reported (console and report, status "error")
and the others are still processed; the exit code is non-zero if anything failed. Existing
outputs are never overwritten without `--overwrite`: the run refuses up front, naming the
file, before any work is done.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from qatacov_jax.data import imageio
from qatacov_jax.inference.infection_map import (
    DEFAULT_DISPLAY_FLOOR,
    binary_mask_image,
    infection_map,
)
from qatacov_jax.inference.predictor import Predictor, grid_max_key
from qatacov_jax.inference.severity import DEFAULT_SCALE, SeverityScale, quantify
from qatacov_jax.runtime.files import OutputExistsError, save_png, write_json, write_text
from qatacov_jax.runtime.sharding import make_mesh
from qatacov_jax.training.rundir import load_model

log = logging.getLogger(__name__)

REPORT_CSV = "report.csv"
REPORT_JSON = "report.json"
REPORT_FIELDS = (
    "file",
    "status",
    "error",
    "height",
    "width",
    "covid19",
    "max_probability",
    "infected_percent_of_image",
    "lung_percent_of_image",
    "infected_percent_of_lung",
    "severity_grade",
    "severity",
    "intensity",
    "map",
    "mask",
    "lung_mask",
)


@dataclasses.dataclass(frozen=True)
class InputItem:
    """One file to process and the output stem (relative to --out) its results go to."""

    path: Path
    key: str


@dataclasses.dataclass(frozen=True)
class InputError:
    """An input that is not processed at all (missing path, empty folder)."""

    path: Path
    reason: str


def _looks_like_image(path: Path) -> bool:
    # In folders we pick up known suffixes, plus suffix-less DICOMs (RSNA ships those);
    # explicitly named files are always tried, so a wrong suffix still gets a clear error.
    return path.suffix.lower() in imageio.SUPPORTED_SUFFIXES or (
        path.suffix == "" and imageio.is_dicom(path)
    )


def collect_inputs(inputs: Sequence[str | Path]) -> tuple[list[InputItem], list[InputError]]:
    """Expands files and folders (recursively) into the list of images to process.

    Returns:
      (items in a stable order with unique output keys, errors for missing paths and
      folders without any image file).
    """
    items: list[InputItem] = []
    errors: list[InputError] = []
    used: set[str] = set()

    def add(path: Path, key: str) -> None:
        base, n = key, 2
        while key in used:  # same relative name from two inputs: keep both, suffix _2, _3..
            key = f"{base}_{n}"
            n += 1
        used.add(key)
        items.append(InputItem(path, key))

    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and _looks_like_image(p))
            if not files:
                errors.append(
                    InputError(
                        path,
                        "folder contains no image files (looked recursively for "
                        f"{', '.join(imageio.SUPPORTED_SUFFIXES)} and DICOM)",
                    )
                )
            for f in files:
                rel = f.relative_to(path).with_suffix("")
                add(f, (Path(path.absolute().name) / rel).as_posix())
        elif path.is_file():
            add(path, path.with_suffix("").name)
        else:
            errors.append(InputError(path, "no such file or folder"))
    return items, errors


def output_paths(key: str, out_dir: Path, with_lung: bool) -> dict[str, Path]:
    paths = {"map": out_dir / f"{key}_map.png", "mask": out_dir / f"{key}_mask.png"}
    if with_lung:
        paths["lung_mask"] = out_dir / f"{key}_lung_mask.png"
    return paths


def check_no_overwrite(
    items: Sequence[InputItem], out_dir: Path, with_lung: bool, overwrite: bool
) -> None:
    """Raises OutputExistsError naming the first existing output, unless `overwrite` is set
    and `out_dir` is recognisably an earlier output of ours (its report.json): an output
    name that collides with an unrelated file is never replaced."""
    candidates = [out_dir / REPORT_CSV, out_dir / REPORT_JSON]
    for item in items:
        candidates.extend(output_paths(item.key, out_dir, with_lung).values())
    existing = [p for p in candidates if p.exists()]
    if not existing:
        return
    more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
    if not overwrite:
        raise OutputExistsError(
            f"{existing[0]} already exists{more}; refusing to overwrite earlier results. "
            "Choose another --out folder or pass --overwrite."
        )
    if not _is_our_output(out_dir):
        raise OutputExistsError(
            f"{existing[0]} already exists{more} and {out_dir} is not an earlier output of "
            f"scripts/infer.py (no {REPORT_JSON} of ours in it); refusing to replace it even "
            "with --overwrite. Choose another --out folder."
        )


def _is_our_output(out_dir: Path) -> bool:
    try:
        report = json.loads((out_dir / REPORT_JSON).read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(report, dict)
        and isinstance(report.get("images"), list)
        and ("checkpoint" in report)
    )


def _read(item: InputItem) -> tuple[InputItem, np.ndarray | None, str | None]:
    try:
        img, note = imageio.read_xray_with_info(item.path)
        # Kept aside (dict writes are atomic across the reader threads) so that the read
        # tuple keeps its shape; `_write_outputs` moves it into the report row.
        _INTENSITY_NOTES[item.path] = note
        return item, img, None
    except imageio.ImageReadError as e:
        return item, None, e.reason
    except Exception as e:  # noqa: BLE001 - one odd file must not end the run
        return item, None, f"{type(e).__name__}: {e}"


# How each input's intensities were mapped to [0, 1] (imageio.read_xray_with_info), reported
# per image as "intensity" (e.g. a 12-bit X-ray in a 16-bit PNG: "sBIT 12: values / 4095").
_INTENSITY_NOTES: dict[Path, str] = {}


def _finite(x: Any) -> Any:
    # NaN (e.g. % of lung when no lung was found) is written as an empty cell / JSON null.
    return None if isinstance(x, float) and not math.isfinite(x) else x


def run_inference(
    items: Sequence[InputItem],
    predict_batch: Callable[[list[np.ndarray]], list[dict[str, np.ndarray]]],
    out_dir: Path,
    *,
    batch_size: int,
    threshold: float = 0.5,
    lung_threshold: float = 0.5,
    display_floor: float = DEFAULT_DISPLAY_FLOOR,
    scale: SeverityScale = DEFAULT_SCALE,
    with_lung: bool = False,
) -> list[dict[str, Any]]:
    """Reads, predicts and writes per-image outputs; returns one report row per item.

    Args:
      predict_batch: list of (H, W) images in [0, 1] -> per image a dict with "infection"
        (and "lung" when with_lung) (H, W) probability maps (`inference.Predictor`).
    """
    rows: list[dict[str, Any]] = []
    total, done, t0 = len(items), 0, time.time()
    # Colouring and PNG encoding (numpy and zlib release the GIL) run on worker threads while
    # the device predicts the next chunk; a chunk's rows are collected one chunk later, so at
    # most two chunks of outputs are in memory.
    writers = ThreadPoolExecutor(max_workers=4)
    previous: dict[int, Any] = {}

    def collect(chunk_rows: dict[int, Any]) -> None:
        rows.extend(
            r.result() if isinstance(r, Future) else r for _, r in sorted(chunk_rows.items())
        )

    def chunks() -> Iterator[list[tuple[InputItem, np.ndarray | None, str | None]]]:
        # Decoding (PNG/DICOM) runs in threads, one chunk ahead of the devices.
        with ThreadPoolExecutor(max_workers=4) as pool:

            def submit(start: int) -> list[Any]:
                return [pool.submit(_read, it) for it in items[start : start + batch_size]]

            pending = submit(0)
            for start in range(0, total, batch_size):
                current, pending = pending, submit(start + batch_size)
                yield [f.result() for f in current]

    try:
        for chunk in chunks():
            # Rows keep the input order, failed files included (the report reads like the input).
            chunk_rows: dict[int, Any] = {}  # index in chunk -> row, or the Future of one
            good = []
            for i, (it, img, err) in enumerate(chunk):
                if err is None:
                    good.append((i, it, img))
                else:
                    log.error("%s: %s", it.path, err)
                    chunk_rows[i] = {"file": str(it.path), "status": "error", "error": err}
            try:
                preds = predict_batch([img for _, _, img in good]) if good else []
            except Exception as e:  # noqa: BLE001 - report the batch's files, go on with the rest
                for i, it, _ in good:
                    log.error("%s: prediction failed (%s: %s)", it.path, type(e).__name__, e)
                    chunk_rows[i] = {
                        "file": str(it.path),
                        "status": "error",
                        "error": f"prediction failed: {e}",
                    }
                preds, good = [], []
            for (i, it, img), pred in zip(good, preds, strict=True):
                chunk_rows[i] = writers.submit(
                    _write_outputs,
                    it,
                    img,
                    pred,
                    out_dir,
                    threshold,
                    lung_threshold,
                    display_floor,
                    scale,
                    with_lung,
                )
            collect(previous)
            previous = chunk_rows
            done += len(chunk)
            rate = done / max(time.time() - t0, 1e-9)
            log.info("processed %d/%d images (%.1f images/s)", done, total, rate)
        collect(previous)
    finally:
        writers.shutdown()  # waits for the outputs already submitted
    return rows


def image_report(
    img: np.ndarray,
    pred: dict[str, np.ndarray],
    *,
    threshold: float = 0.5,
    lung_threshold: float = 0.5,
    scale: SeverityScale = DEFAULT_SCALE,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray | None]:
    """The report fields of one image and its binary masks (no files written).

    The one place that turns probability maps into the decision and severity, shared by
    `scripts/infer.py` and the web app (`qatacov_jax.webapp`), so both report the same.

    Args:
      img: (H, W) X-ray in [0, 1].
      pred: "infection" (and optionally "lung") -> (H, W) probabilities, and optionally
        `grid_max_key("infection")` -> the map's maximum on the model grid (the decision).

    Returns:
      (fields: height, width, covid19, max_probability and `severity.quantify`'s fields;
      (H, W) uint8 0/255 infection mask; (H, W) uint8 lung mask or None without "lung").
    """
    prob = pred["infection"]
    mask = binary_mask_image(prob, threshold)
    lung = binary_mask_image(pred["lung"], lung_threshold) if "lung" in pred else None
    # Decided on the model grid, as evaluate.py (docs/method.md#detection-rule); the resized
    # map's maximum is the fallback for a `pred` that does not carry it.
    max_p = float(pred.get(grid_max_key("infection"), prob.max()))
    fields: dict[str, Any] = {
        "height": int(img.shape[0]),
        "width": int(img.shape[1]),
        "covid19": bool(max_p >= threshold),
        "max_probability": max_p,
    }
    fields.update(quantify(mask > 0, None if lung is None else lung > 0, scale=scale))
    return fields, mask, lung


def _write_outputs(
    item: InputItem,
    img: np.ndarray,
    pred: dict[str, np.ndarray],
    out_dir: Path,
    threshold: float,
    lung_threshold: float,
    display_floor: float,
    scale: SeverityScale,
    with_lung: bool,
) -> dict[str, Any]:
    paths = output_paths(item.key, out_dir, with_lung)
    fields, mask, lung = image_report(
        img,
        pred if with_lung else {k: v for k, v in pred.items() if not k.startswith("lung")},
        threshold=threshold,
        lung_threshold=lung_threshold,
        scale=scale,
    )
    try:
        save_png(paths["map"], infection_map(img, pred["infection"], floor=display_floor))
        save_png(paths["mask"], mask)
        if lung is not None:
            save_png(paths["lung_mask"], lung)
    except OSError as e:
        log.error("%s: cannot write outputs (%s)", item.path, e)
        return {"file": str(item.path), "status": "error", "error": f"cannot write outputs: {e}"}
    row: dict[str, Any] = {
        "intensity": _INTENSITY_NOTES.pop(item.path, ""),
        "file": str(item.path),
        "status": "ok",
        "error": "",
    }
    row.update(fields)
    row.update(map=str(paths["map"]), mask=str(paths["mask"]))
    if lung is not None:
        row["lung_mask"] = str(paths["lung_mask"])
    return row


def write_reports(rows: Sequence[dict[str, Any]], out_dir: Path, meta: dict[str, Any]) -> None:
    """report.csv (one row per file) and report.json (settings + the same rows)."""
    clean = [{k: _finite(v) for k, v in r.items()} for r in rows]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=REPORT_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in clean:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in REPORT_FIELDS})
    write_text(out_dir / REPORT_CSV, buf.getvalue())
    write_json(out_dir / REPORT_JSON, {**meta, "images": clean})


def _input_size(config: Any, run_dir: Path) -> Any:
    size = config.get("data", {}).get("image_size")
    if size is None:
        raise ValueError(f"{run_dir}/config.json names no data.image_size; cannot size the inputs.")
    return tuple(size) if isinstance(size, list | tuple) else int(size)


@dataclasses.dataclass(frozen=True)
class LoadedModels:
    """Trained models by role ("infection", "lung"), with what running them needs.

    Attributes:
      models: name -> model in eval mode.
      configs: name -> the run's configuration.
      preprocessing: name -> the input preprocessing the model was trained with.
      sizes: name -> input size (a square's side, or (height, width)).
      runs: name -> the run directory it came from.
    """

    models: dict[str, Any]
    configs: dict[str, Any]
    preprocessing: dict[str, Any]
    sizes: dict[str, Any]
    runs: dict[str, Path]


def load_models(runs: dict[str, str | Path], *, which: str = "best") -> LoadedModels:
    """Loads each run directory's model (`training.rundir.load_model`) and its input size.

    Raises:
      FileNotFoundError, ValueError: a run cannot be loaded; the message names its role.
    """
    loaded = LoadedModels({}, {}, {}, {}, {})
    for name, run_dir in runs.items():
        run_dir = Path(run_dir)
        try:
            model, config, prep = load_model(run_dir, which=which)
            size = _input_size(config, run_dir)
        except (FileNotFoundError, ValueError) as e:
            raise type(e)(f"cannot load the {name} model from {run_dir}: {e}") from None
        loaded.models[name], loaded.configs[name] = model, config
        loaded.preprocessing[name], loaded.sizes[name] = prep, size
        loaded.runs[name] = run_dir
    return loaded


def infer_files(
    checkpoint: str | Path,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    lung_checkpoint: str | Path | None = None,
    threshold: float = 0.5,
    lung_threshold: float = 0.5,
    display_floor: float = DEFAULT_DISPLAY_FLOOR,
    batch_size: int | None = None,
    which: str = "best",
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """What `scripts/infer.py` does: X-ray files and folders -> maps, masks and reports.

    Args:
      checkpoint: run directory of the infection model; `lung_checkpoint` of a lung model.
      batch_size: images per step over all devices (default 8 per device).

    Returns:
      One report row per input (status "ok" or "error"), as written to report.json.

    Raises:
      FileExistsError: an output exists and `overwrite` is False (checked before any work).
      FileNotFoundError, ValueError: a model cannot be loaded or the batch size does not fit.
    """
    out_dir = Path(out_dir)
    items, input_errors = collect_inputs(inputs)
    for e in input_errors:
        log.error("%s: %s", e.path, e.reason)
    with_lung = lung_checkpoint is not None
    check_no_overwrite(items, out_dir, with_lung, overwrite)

    mesh = make_mesh()
    batch_size = batch_size or 8 * mesh.devices.size
    runs: dict[str, str | Path] = {"infection": checkpoint}
    if lung_checkpoint is not None:
        runs["lung"] = lung_checkpoint
    loaded = load_models(runs, which=which)
    predictor = Predictor(
        loaded.models, loaded.preprocessing, loaded.sizes, mesh, batch_size=batch_size
    )
    log.info(
        "%d images to process on %d device(s), batch %d", len(items), mesh.devices.size, batch_size
    )
    rows = run_inference(
        items,
        predictor.predict_batch,
        out_dir,
        batch_size=batch_size,
        threshold=threshold,
        lung_threshold=lung_threshold,
        display_floor=display_floor,
        with_lung=with_lung,
    )
    rows += [{"file": str(e.path), "status": "error", "error": e.reason} for e in input_errors]
    meta = {
        "checkpoint": str(runs["infection"]),
        "lung_checkpoint": None if not with_lung else str(runs["lung"]),
        "threshold": threshold,
        "lung_threshold": lung_threshold,
        "display_floor": display_floor,
        "severity_scale": {
            "bounds": list(DEFAULT_SCALE.bounds),
            "names": list(DEFAULT_SCALE.names),
        },
    }
    write_reports(rows, out_dir, meta)
    ok = sum(r["status"] == "ok" for r in rows)
    log.info("wrote %d image result(s) and %s to %s", ok, REPORT_CSV, out_dir)
    return rows
