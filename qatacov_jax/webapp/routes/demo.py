"""The demo: the page (`GET /`), what it needs to know (`GET /api/config`) and the
prediction of one uploaded X-ray (`POST /api/predict`)."""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

from fastapi import APIRouter, File, UploadFile
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from qatacov_jax.inference.decision import image_report
from qatacov_jax.inference.infection_map import infection_map
from qatacov_jax.inference.severity import DEFAULT_SCALE
from qatacov_jax.webapp import images
from qatacov_jax.webapp.deps import ApiError, EngineDep, OptionalStoreDep, Settings, SettingsDep
from qatacov_jax.webapp.engine import Engine
from qatacov_jax.webapp.modelinfo import describe_run
from qatacov_jax.webapp.plausibility import input_warnings
from qatacov_jax.webapp.schemas import ConfigResponse, ErrorResponse, PredictResponse

STATIC = resources.files("qatacov_jax.webapp") / "static"

BLIND_MODEL = "not named (blind annotation)"

page = APIRouter()  # no token: the page itself holds no data
router = APIRouter()  # under /api


@page.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(str(STATIC / "index.html"), media_type="text/html")


def model_infos(engine: Engine, settings: Settings) -> dict[str, dict[str, Any]]:
    """`ModelInfo` of the infection model, the lung model (if any) and, unless blind, each
    candidate by its name."""
    roles = ["infection", "lung"] + ([] if settings.blind else list(engine.candidate_names))
    return {
        r: describe_run(engine.runs[r].absolute(), settings.which, engine.roles.get(r, r))
        for r in roles
        if r in engine.runs
    }


@router.get("/config", response_model=ConfigResponse)
async def config(
    engine: EngineDep, settings: SettingsDep, store: OptionalStoreDep
) -> dict[str, Any]:
    # Blind: the infection model is by default a candidate too, so its run folder or label
    # would tell the annotator which candidate is which; no model is named at all.
    blind = settings.blind
    return {
        "models": {} if blind else await run_in_threadpool(model_infos, engine, settings),
        "lung": engine.with_lung,
        "annotate": store is not None,
        "candidates": [] if settings.blind else list(engine.candidate_names),
        "blind": settings.blind,
        "threshold": settings.threshold,
        "lung_threshold": settings.lung_threshold,
        "display_floor": settings.display_floor,
        "max_upload_mb": settings.max_upload_mb,
        "severity_scale": {
            "bounds": list(DEFAULT_SCALE.bounds),
            "names": list(DEFAULT_SCALE.names),
        },
        "checkpoint": "" if blind else str(engine.runs["infection"]),
        "engine": engine.engine,
    }


@router.post(
    "/predict",
    response_model=PredictResponse,
    response_model_exclude_unset=True,  # no lung model: no lung fields, not nulls
    responses={
        413: {"model": ErrorResponse, "description": "over --max-upload-mb or --max-megapixels"},
        415: {"model": ErrorResponse, "description": "a DICOM layout that cannot be read"},
        422: {
            "model": ErrorResponse,
            "description": "not a readable X-ray, smaller than a radiograph, or no `file`",
        },
    },
)
async def predict(
    engine: EngineDep,
    settings: SettingsDep,
    file: UploadFile = File(..., description="PNG, JPEG, BMP, TIFF or DICOM"),
) -> dict[str, Any]:
    """An X-ray file -> its infection map and report."""
    name = display_name(file.filename)
    limit = settings.max_upload_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise ApiError(
            413, f"{name} is over the --max-upload-mb limit of {settings.max_upload_mb:g} MB"
        )
    return await run_in_threadpool(analyse, engine, settings, data, name)


def display_name(name: str | None) -> str:
    """The client's file name, for display and the report only (never a path)."""
    name = (name or "upload").replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(c for c in name if c.isprintable())[:200] or "upload"


def analyse(engine: Engine, settings: Settings, data: bytes, name: str) -> dict[str, Any]:
    """Uploaded bytes -> `PredictResponse`'s fields (runs on a worker thread)."""
    try:
        upload = images.decode_upload(data)
    except images.UploadError as e:
        raise ApiError(e.status, f"{name}: {e}") from None
    img = upload.image
    pred = engine.infer.predict(img)
    fields, mask, lung = image_report(
        img, pred, threshold=settings.threshold, lung_threshold=settings.lung_threshold
    )
    prob = pred["infection"]
    warnings = input_warnings(img, upload.colour_fraction)
    row: dict[str, Any] = {"intensity": upload.intensity, "file": name, "status": "ok", "error": ""}
    row.update(dicom=upload.dicom, warnings=warnings)
    row.update(fields)
    row["decision"] = decision_text(fields["covid19"], warnings)
    png = images.png_bytes
    row["map"] = images.data_url(png(infection_map(img, prob, floor=settings.display_floor)))
    row["mask"] = images.data_url(png(mask))
    if lung is not None:
        row["lung_mask"] = images.data_url(png(lung))
    # For the page: the X-ray as the browser can show it (DICOM cannot be) and the
    # probabilities to re-threshold with (images.encode_probability).
    row["xray"] = images.data_url(png(images.to_uint8(img)))
    if images.deeper_than_8_bits(img):
        row["xray16"] = images.data_url(images.encode_probability(img))
    row["probability"] = images.data_url(images.encode_probability(prob))
    infos = model_infos(engine, settings)
    blind = settings.blind  # as in `config`: the demo must not name a blind candidate
    row.update(
        threshold=settings.threshold,
        lung_threshold=settings.lung_threshold if lung is not None else None,
        display_floor=settings.display_floor,
        checkpoint="" if blind else str(engine.runs["infection"]),
        lung_checkpoint=str(engine.runs["lung"]) if lung is not None else None,
        model=BLIND_MODEL if blind else infos["infection"]["label"],
        checkpoint_step=None if blind else infos["infection"]["step"],
        analysed_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    if lung is not None:
        row["lung_model"] = infos["lung"]["label"]
    return row


def decision_text(covid19: bool, warnings: list[str]) -> str:
    """The decision in words, withheld when the upload does not look like a chest X-ray."""
    if warnings:
        return "not assessed: the upload does not look like a chest X-ray"
    return "COVID-19 detected" if covid19 else "No COVID-19 detected"
