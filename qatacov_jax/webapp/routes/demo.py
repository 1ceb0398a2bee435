"""The demo: the page (`GET /`), what it needs to know (`GET /api/config`) and the
prediction of one uploaded X-ray (`POST /api/predict`)."""

from __future__ import annotations

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
from qatacov_jax.webapp.schemas import ConfigResponse, ErrorResponse, PredictResponse

STATIC = resources.files("qatacov_jax.webapp") / "static"

page = APIRouter()  # no token: the page itself holds no data
router = APIRouter()  # under /api


@page.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(str(STATIC / "index.html"), media_type="text/html")


@router.get("/config", response_model=ConfigResponse)
async def config(
    engine: EngineDep, settings: SettingsDep, store: OptionalStoreDep
) -> dict[str, Any]:
    return {
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
        "checkpoint": str(engine.runs["infection"]),
    }


@router.post(
    "/predict",
    response_model=PredictResponse,
    response_model_exclude_unset=True,  # no lung model: no lung fields, not nulls
    responses={
        413: {"model": ErrorResponse, "description": "over --max-upload-mb"},
        415: {"model": ErrorResponse, "description": "a DICOM layout that cannot be read"},
        422: {"model": ErrorResponse, "description": "not a readable X-ray, or no `file`"},
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
        img, intensity = images.decode_upload(data)
    except images.UploadError as e:
        raise ApiError(e.status, f"{name}: {e}") from None
    pred = engine.infer.predict(img)
    fields, mask, lung = image_report(
        img, pred, threshold=settings.threshold, lung_threshold=settings.lung_threshold
    )
    prob = pred["infection"]
    row: dict[str, Any] = {"intensity": intensity, "file": name, "status": "ok", "error": ""}
    row.update(fields)
    png = images.png_bytes
    row["map"] = images.data_url(png(infection_map(img, prob, floor=settings.display_floor)))
    row["mask"] = images.data_url(png(mask))
    if lung is not None:
        row["lung_mask"] = images.data_url(png(lung))
    # For the page: the X-ray as the browser can show it (DICOM cannot be) and the
    # probabilities to re-threshold with (images.encode_probability).
    row["xray"] = images.data_url(png(images.to_uint8(img)))
    row["probability"] = images.data_url(images.encode_probability(prob))
    row.update(
        threshold=settings.threshold,
        lung_threshold=settings.lung_threshold if lung is not None else None,
        display_floor=settings.display_floor,
        checkpoint=str(engine.runs["infection"]),
        lung_checkpoint=str(engine.runs["lung"]) if lung is not None else None,
    )
    return row
