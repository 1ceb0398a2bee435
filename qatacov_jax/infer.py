"""Infection maps, masks, COVID-19 decision and severity for X-ray files (`scripts/infer.py`).

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

import argparse
import csv
import dataclasses
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from qatacov_jax import imageio
from qatacov_jax.infection_map import DEFAULT_DISPLAY_FLOOR, binary_mask_image, infection_map
from qatacov_jax.logs import setup_cli_logging
from qatacov_jax.severity import DEFAULT_SCALE, SeverityScale, quantify

log = logging.getLogger("qatacov_jax.infer")

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
    "map",
    "mask",
    "lung_mask",
)


class OutputExistsError(FileExistsError):
    """An output file exists and --overwrite was not given."""


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
    """Raises OutputExistsError naming the first existing output unless overwrite is set."""
    if overwrite:
        return
    candidates = [out_dir / REPORT_CSV, out_dir / REPORT_JSON]
    for item in items:
        candidates.extend(output_paths(item.key, out_dir, with_lung).values())
    existing = [p for p in candidates if p.exists()]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise OutputExistsError(
            f"{existing[0]} already exists{more}; refusing to overwrite earlier results. "
            "Choose another --out folder or pass --overwrite."
        )


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    Image.fromarray(array).save(tmp)
    tmp.replace(path)  # a crash never leaves a half-written PNG under the final name


def _read(item: InputItem) -> tuple[InputItem, np.ndarray | None, str | None]:
    try:
        return item, imageio.read_xray(item.path), None
    except imageio.ImageReadError as e:
        return item, None, e.reason
    except Exception as e:  # noqa: BLE001 - one odd file must not end the run
        return item, None, f"{type(e).__name__}: {e}"


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

    def chunks() -> Iterator[list[tuple[InputItem, np.ndarray | None, str | None]]]:
        # Decoding (PNG/DICOM) runs in threads, one chunk ahead of the devices.
        with ThreadPoolExecutor(max_workers=4) as pool:

            def submit(start: int) -> list[Any]:
                return [pool.submit(_read, it) for it in items[start : start + batch_size]]

            pending = submit(0)
            for start in range(0, total, batch_size):
                current, pending = pending, submit(start + batch_size)
                yield [f.result() for f in current]

    for chunk in chunks():
        # Rows keep the input order, failed files included, so the report reads like the input.
        chunk_rows: dict[int, dict[str, Any]] = {}
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
            chunk_rows[i] = _write_outputs(
                it, img, pred, out_dir, threshold, lung_threshold, display_floor, scale, with_lung
            )
        rows.extend(chunk_rows[i] for i in sorted(chunk_rows))
        done += len(chunk)
        rate = done / max(time.time() - t0, 1e-9)
        log.info("processed %d/%d images (%.1f images/s)", done, total, rate)
    return rows


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
    prob = pred["infection"]
    paths = output_paths(item.key, out_dir, with_lung)
    mask = binary_mask_image(prob, threshold)
    lung = binary_mask_image(pred["lung"], lung_threshold) if with_lung else None
    try:
        _save_png(infection_map(img, prob, floor=display_floor), paths["map"])
        _save_png(mask, paths["mask"])
        if lung is not None:
            _save_png(lung, paths["lung_mask"])
    except OSError as e:
        log.error("%s: cannot write outputs (%s)", item.path, e)
        return {"file": str(item.path), "status": "error", "error": f"cannot write outputs: {e}"}
    max_p = float(prob.max())
    row: dict[str, Any] = {
        "file": str(item.path),
        "status": "ok",
        "error": "",
        "height": int(img.shape[0]),
        "width": int(img.shape[1]),
        "covid19": bool(max_p >= threshold),
        "max_probability": max_p,
        "map": str(paths["map"]),
        "mask": str(paths["mask"]),
    }
    row.update(quantify(mask > 0, None if lung is None else lung > 0, scale=scale))
    if lung is not None:
        row["lung_mask"] = str(paths["lung_mask"])
    return row


def write_reports(rows: Sequence[dict[str, Any]], out_dir: Path, meta: dict[str, Any]) -> None:
    """report.csv (one row per file) and report.json (settings + the same rows)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    clean = [{k: _finite(v) for k, v in r.items()} for r in rows]
    tmp = out_dir / (REPORT_CSV + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=REPORT_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in clean:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in REPORT_FIELDS})
    tmp.replace(out_dir / REPORT_CSV)
    tmp = out_dir / (REPORT_JSON + ".tmp")
    tmp.write_text(json.dumps({**meta, "images": clean}, indent=2))
    tmp.replace(out_dir / REPORT_JSON)


def _input_size(config: Any, run_dir: Path) -> Any:
    for get in (lambda c: c.data.image_size, lambda c: c.image_size):
        try:
            size = get(config)
        except (AttributeError, KeyError):
            continue
        if size is not None:
            return tuple(size) if isinstance(size, list | tuple) else int(size)
    raise ValueError(f"{run_dir}/config.json names no data.image_size; cannot size the inputs.")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/infer.py",
        description="COVID-19 infection maps, masks, detection and severity for chest X-rays.",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        help="run directory of the infection model (scripts/train.py --workdir, or fold_k/)",
    )
    p.add_argument("inputs", nargs="+", type=Path, help="image files and/or folders (recursive)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument(
        "--lung-checkpoint",
        type=Path,
        default=None,
        help="run directory of a lung model: adds %% of lung area and severity grade",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="probability at or above which a pixel is infected (default 0.5)",
    )
    p.add_argument("--lung-threshold", type=float, default=0.5)
    p.add_argument(
        "--display-floor",
        type=float,
        default=DEFAULT_DISPLAY_FLOOR,
        help="probabilities below this show the plain X-ray in the map",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per step over all devices (default: 8 per device)",
    )
    p.add_argument(
        "--which",
        choices=("best", "latest"),
        default="best",
        help="which checkpoint of the run(s) to use",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 all good, 1 some inputs failed, 2 refused)."""
    args = build_parser().parse_args(argv)
    setup_cli_logging()
    for name, value in (("--threshold", args.threshold), ("--lung-threshold", args.lung_threshold)):
        if not 0.0 < value <= 1.0:
            print(f"error: {name} must be in (0, 1], got {value}", file=sys.stderr)
            return 2
    items, input_errors = collect_inputs(args.inputs)
    for e in input_errors:
        log.error("%s: %s", e.path, e.reason)
    with_lung = args.lung_checkpoint is not None
    try:
        check_no_overwrite(items, args.out, with_lung, args.overwrite)
    except OutputExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    # Heavy imports after the cheap checks, so a typo fails in a second.
    from qatacov_jax.checkpoint import load_model
    from qatacov_jax.inference import Predictor
    from qatacov_jax.sharding import make_mesh

    mesh = make_mesh()
    batch_size = args.batch_size or 8 * mesh.devices.size
    runs = {"infection": args.checkpoint}
    if with_lung:
        runs["lung"] = args.lung_checkpoint
    models, preps, sizes = {}, {}, {}
    for name, run_dir in runs.items():
        try:
            model, config, prep = load_model(run_dir, which=args.which)
            sizes[name] = _input_size(config, run_dir)
        except (FileNotFoundError, ValueError) as e:
            print(f"error: cannot load the {name} model from {run_dir}: {e}", file=sys.stderr)
            return 2
        models[name], preps[name] = model, prep
    try:
        predictor = Predictor(models, preps, sizes, mesh, batch_size=batch_size)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log.info(
        "%d images to process on %d device(s), batch %d", len(items), mesh.devices.size, batch_size
    )
    rows = run_inference(
        items,
        predictor.predict_batch,
        args.out,
        batch_size=batch_size,
        threshold=args.threshold,
        lung_threshold=args.lung_threshold,
        display_floor=args.display_floor,
        with_lung=with_lung,
    )
    rows += [{"file": str(e.path), "status": "error", "error": e.reason} for e in input_errors]
    meta = {
        "checkpoint": str(args.checkpoint),
        "lung_checkpoint": None if not with_lung else str(args.lung_checkpoint),
        "threshold": args.threshold,
        "lung_threshold": args.lung_threshold,
        "display_floor": args.display_floor,
        "severity_scale": {
            "bounds": list(DEFAULT_SCALE.bounds),
            "names": list(DEFAULT_SCALE.names),
        },
    }
    write_reports(rows, args.out, meta)
    failed = [r for r in rows if r["status"] != "ok"]
    ok = len(rows) - len(failed)
    log.info("wrote %d image result(s) and %s to %s", ok, REPORT_CSV, args.out)
    if failed:
        print(f"{len(failed)} input(s) failed:", file=sys.stderr)
        for r in failed:
            print(f"  {r['file']}: {r['error']}", file=sys.stderr)
        return 1
    if not rows:
        print("error: no images were given", file=sys.stderr)
        return 1
    return 0
