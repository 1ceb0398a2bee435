"""X-ray files in -> infection maps, masks, COVID-19 decision and severity out (`scripts/infer.py`).

Inputs are files or folders (searched recursively) of PNG (8/16-bit), JPEG, BMP/TIFF and
DICOM, of any size. Per image we write, mirroring the input's relative path under `--out`:

    <name>_map.png        infection map at the image's original resolution (infection_map.py)
    <name>_mask.png       binary infection mask (0/255, probability >= --threshold)
    <name>_lung_mask.png  binary lung mask (only with --lung-checkpoint)

and for the whole run `report.csv` and `report.json` (`inference.reports`): per file the
COVID-19 decision (any pixel >= threshold, the paper's rule), the maximum probability, the
infected area as % of the image and, with a lung model, as % of the lung area with a severity
grade (`inference.decision`, `inference.severity`). The models come from their run
directories (`inference.runs.run_source`, on JAX) or from an ONNX export
(`export.onnx_runtime.export_source`, on ONNX Runtime: this module then imports no JAX).

Failure policy: a file that cannot be read is reported (console and report, status "error")
and the others are still processed; the exit code is non-zero if anything failed. Existing
outputs are never overwritten without `--overwrite`: the run refuses up front, naming the
file, before any work is done. A run that was killed can be rerun as it was: its marker
(`runtime.unfinished`) tells its own unfinished output, the images it finished are kept
and the others redone (`--overwrite` redoes all).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from qatacov_jax.data import image_limits, imageio
from qatacov_jax.inference.decision import image_report
from qatacov_jax.inference.infection_map import DEFAULT_DISPLAY_FLOOR, infection_map
from qatacov_jax.inference.outputs import (  # noqa: F401 - check_no_overwrite: tests, docs
    TOOL,
    check_no_overwrite,
    output_paths,
    resume_point,
)
from qatacov_jax.inference.reports import REPORT_CSV, REPORT_JSON, run_settings, write_reports
from qatacov_jax.inference.runs import ModelSource, run_source
from qatacov_jax.inference.severity import DEFAULT_SCALE, SeverityScale
from qatacov_jax.runtime import unfinished
from qatacov_jax.runtime.files import save_png
from qatacov_jax.runtime.storage import check_writable

log = logging.getLogger(__name__)


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


@dataclasses.dataclass(frozen=True)
class _Read:
    """One input after decoding: the (H, W) image in [0, 1] and how its intensities were
    mapped there (`imageio.read_xray_with_info`, reported per image as "intensity", e.g.
    "sBIT 12: values / 4095"), or why it could not be read."""

    item: InputItem
    image: np.ndarray | None = None
    intensity: str = ""
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class _WriteSettings:
    """What `_write_outputs` needs besides the image and its prediction."""

    out_dir: Path
    threshold: float
    lung_threshold: float
    display_floor: float
    scale: SeverityScale
    with_lung: bool


# A report row, or the Future of one while its outputs are being written.
_Slot = dict[str, Any] | Future


def _read(item: InputItem, min_side: int | None = None) -> _Read:
    try:
        # The pixel budget applies to every file (from the header, before decoding).
        img, note = imageio.read_xray_with_info(item.path, min_side=min_side)
    except imageio.ImageReadError as e:
        return _Read(item, error=e.reason)
    except Exception as e:  # noqa: BLE001 - one odd file must not end the run
        return _Read(item, error=f"{type(e).__name__}: {e}")
    return _Read(item, img, note)


def _error_row(path: Path, error: str) -> dict[str, Any]:
    return {"file": str(path), "status": "error", "error": error}


def _read_chunks(
    items: Sequence[InputItem], batch_size: int, min_side: int | None = None
) -> Iterator[list[_Read]]:
    """`items` decoded in chunks of `batch_size`; decoding (PNG/DICOM) runs in threads, one
    chunk ahead of the devices."""
    with ThreadPoolExecutor(max_workers=4) as pool:

        def submit(start: int) -> list[Future]:
            chunk = items[start : start + batch_size]
            return [pool.submit(_read, it, min_side) for it in chunk]

        pending = submit(0)
        for start in range(0, len(items), batch_size):
            current, pending = pending, submit(start + batch_size)
            yield [f.result() for f in current]


def _process_chunk(
    chunk: Sequence[_Read],
    predict_batch: Callable[[list[np.ndarray]], list[dict[str, np.ndarray]]],
    writers: ThreadPoolExecutor,
    settings: _WriteSettings,
) -> list[_Slot]:
    """Predicts the chunk's readable images and submits their outputs to `writers`.

    Returns one slot per input, in input order (failed files included, so the report reads
    like the input): an error row, or the Future of the row `_write_outputs` returns.
    """
    slots: list[_Slot] = [{} for _ in chunk]
    good = []
    for i, r in enumerate(chunk):
        if r.error is None:
            good.append((i, r))
        else:
            log.error("%s: %s", r.item.path, r.error)
            slots[i] = _error_row(r.item.path, r.error)
    try:
        preds = predict_batch([r.image for _, r in good]) if good else []
    except Exception as e:  # noqa: BLE001 - report the batch's files, go on with the rest
        for i, r in good:
            log.error("%s: prediction failed (%s: %s)", r.item.path, type(e).__name__, e)
            slots[i] = _error_row(r.item.path, f"prediction failed: {e}")
        return slots
    for (i, r), pred in zip(good, preds, strict=True):
        slots[i] = writers.submit(_write_outputs, r.item, r.image, r.intensity, pred, settings)
    return slots


def _rows(slots: Sequence[_Slot]) -> list[dict[str, Any]]:
    return [s.result() if isinstance(s, Future) else s for s in slots]


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
    on_row: Callable[[InputItem, dict[str, Any]], None] | None = None,
    min_side: int | None = None,
) -> list[dict[str, Any]]:
    """Reads, predicts and writes per-image outputs; returns one report row per item.

    Args:
      predict_batch: list of (H, W) images in [0, 1] -> per image a dict with "infection"
        (and "lung" when with_lung) (H, W) probability maps (`inference.Predictor`).
      on_row: called with each item and its row once the item's outputs are written (the
        journal of `runtime.unfinished`), in input order.
      min_side: images with a shorter side get an error row, not a decision
        (`infer_files`: `image_limits.MIN_RADIOGRAPH_SIDE`).
    """
    settings = _WriteSettings(out_dir, threshold, lung_threshold, display_floor, scale, with_lung)
    rows: list[dict[str, Any]] = []
    total, done, t0 = len(items), 0, time.time()
    # Colouring and PNG encoding (numpy and zlib release the GIL) run on worker threads while
    # the device predicts the next chunk; a chunk's rows are collected one chunk later, so at
    # most two chunks of outputs are in memory.
    writers = ThreadPoolExecutor(max_workers=4)
    previous: list[_Slot] = []

    def collect(slots: list[_Slot]) -> None:
        for slot in slots:  # one by one: rows before a failed write still reach on_row
            row = _rows([slot])[0]
            if on_row is not None:
                on_row(items[len(rows)], row)
            rows.append(row)

    try:
        for chunk in _read_chunks(items, batch_size, min_side):
            current = _process_chunk(chunk, predict_batch, writers, settings)
            collect(previous)
            previous = current
            done += len(chunk)
            rate = done / max(time.time() - t0, 1e-9)
            log.info("processed %d/%d images (%.1f images/s)", done, total, rate)
        collect(previous)
    finally:
        writers.shutdown()  # waits for the outputs already submitted
    return rows


def _write_outputs(
    item: InputItem,
    img: np.ndarray,
    intensity: str,
    pred: dict[str, np.ndarray],
    settings: _WriteSettings,
) -> dict[str, Any]:
    """Writes one image's map and masks; returns its report row (or an error row)."""
    paths = output_paths(item.key, settings.out_dir, settings.with_lung)
    fields, mask, lung = image_report(
        img,
        pred if settings.with_lung else {k: v for k, v in pred.items() if not k.startswith("lung")},
        threshold=settings.threshold,
        lung_threshold=settings.lung_threshold,
        scale=settings.scale,
    )
    try:
        save_png(paths["map"], infection_map(img, pred["infection"], floor=settings.display_floor))
        save_png(paths["mask"], mask)
        if lung is not None:
            save_png(paths["lung_mask"], lung)
    except OSError as e:
        log.error("%s: cannot write outputs (%s)", item.path, e)
        return _error_row(item.path, f"cannot write outputs: {e}")
    row: dict[str, Any] = {"intensity": intensity, "file": str(item.path)}
    row.update(status="ok", error="")
    row.update(fields)
    row.update(map=str(paths["map"]), mask=str(paths["mask"]))
    if lung is not None:
        row["lung_mask"] = str(paths["lung_mask"])
    return row


def infer_files(
    checkpoint: str | Path | ModelSource,
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
      checkpoint: run directory of the infection model (`lung_checkpoint`: of a lung model,
        `which`: its checkpoint), or a `ModelSource` (an ONNX export:
        `export.onnx_runtime.export_source`), which the other two do not apply to.
      batch_size: images per step over all devices (default: 8 per device on JAX).

    Returns:
      One report row per input (status "ok" or "error"), as written to report.json.

    Raises:
      FileExistsError: an output exists and `overwrite` is False (checked before any work).
      FileNotFoundError, ValueError: a model cannot be loaded or the batch size does not fit.
      StorageError: `out_dir` cannot be written (read-only, full).
    """
    out_dir = Path(out_dir)
    items, input_errors = collect_inputs(inputs)
    for e in input_errors:
        log.error("%s: %s", e.path, e.reason)
    source = (
        checkpoint
        if isinstance(checkpoint, ModelSource)
        else run_source(checkpoint, lung_checkpoint, which)
    )
    with_lung = source.with_lung
    meta = run_settings(source.path, source.lung_path, threshold, lung_threshold, display_floor)
    meta["engine"] = source.engine
    settings = {**meta, "which": which}
    kept = resume_point(items, out_dir, with_lung, overwrite, settings)
    check_writable(out_dir, "the --out folder")

    predictor = source.load(batch_size)
    batch_size = predictor.batch_size
    # The marker before the first output: a killed run is then known as ours.
    names = [REPORT_CSV, REPORT_JSON]
    unfinished.remove_temporaries(
        [out_dir / n for n in names]
        + [p for it in items for p in output_paths(it.key, out_dir, with_lung).values()]
    )
    journal = unfinished.begin(out_dir, TOOL, settings, kept)
    todo = [it for it in items if it.key not in kept]
    log.info("%d images to process, batch %d", len(todo), batch_size)

    def on_row(item: InputItem, row: dict[str, Any]) -> None:
        if row.get("status") == "ok":
            journal.record(item.key, row)

    new = run_inference(
        todo,
        predictor.predict_batch,
        out_dir,
        batch_size=batch_size,
        threshold=threshold,
        lung_threshold=lung_threshold,
        display_floor=display_floor,
        with_lung=with_lung,
        on_row=on_row,
        min_side=image_limits.MIN_RADIOGRAPH_SIDE,  # no decision for what is no radiograph
    )
    by_key = {**kept, **{it.key: row for it, row in zip(todo, new, strict=True)}}
    rows = [by_key[it.key] for it in items]
    rows += [_error_row(e.path, e.reason) for e in input_errors]
    write_reports(rows, out_dir, meta)
    journal.finish()
    ok = sum(r["status"] == "ok" for r in rows)
    log.info("wrote %d image result(s) and %s to %s", ok, REPORT_CSV, out_dir)
    return rows
