"""The FastAPI application: the demo page, `POST /api/predict` and the annotation API.

Routes (every `/api/` route checks the token when the server has one):

    GET  /                       the page (static/index.html; every asset served from here)
    GET  /api/config             what the page needs to know (modes, limits, thresholds)
    POST /api/predict            multipart `file` -> infer.py's report fields + PNGs
    GET  /api/annotate           progress: total, done, pending, next key
    GET  /api/annotate/{key}     X-ray, candidate masks, consensus, disagreement, revision
    POST /api/annotate/{key}     save: {mask | no_infection, source, revision, seconds,
                                 annotator} -> provenance record; 409 on a conflict

Errors are JSON `{"error": "<what is wrong and what to do>"}` with a 4xx status; the
server keeps serving.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import secrets
import threading
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from qatacov_jax.data import imageio
from qatacov_jax.inference.decision import image_report
from qatacov_jax.inference.infection_map import DEFAULT_DISPLAY_FLOOR, infection_map
from qatacov_jax.inference.severity import DEFAULT_SCALE
from qatacov_jax.runtime.files import json_ready
from qatacov_jax.webapp import images
from qatacov_jax.webapp.annotation import (
    CONSENSUS,
    MANUAL,
    AnnotationStore,
    ConflictError,
    UnknownImageError,
    blind_labels,
    candidate_set,
    dice,
    disagreement_image,
    overlay,
)
from qatacov_jax.webapp.engine import Engine

log = logging.getLogger(__name__)

STATIC = resources.files("qatacov_jax.webapp") / "static"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Server options (`scripts/serve.py` flags)."""

    threshold: float = 0.5
    lung_threshold: float = 0.5
    display_floor: float = DEFAULT_DISPLAY_FLOOR
    max_upload_mb: float = 32.0
    token: str | None = None
    blind: bool = False  # annotation: hide model names, shuffle candidates per image

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _json(obj: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(json_ready(obj), status_code=status)


def _display_name(name: str | None) -> str:
    """The client's file name, for display and the report only (never a path)."""
    name = (name or "upload").replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(c for c in name if c.isprintable())[:200] or "upload"


class _CandidateCache:
    """The last few images' candidate sets (computing them is a device call)."""

    def __init__(self, size: int = 16) -> None:
        self._items: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            return None

    def put(self, key: str, value: dict[str, Any]) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


def create_app(
    engine: Engine, settings: Settings = Settings(), store: AnnotationStore | None = None
) -> FastAPI:
    """The web app over loaded models (`engine.load_engine`) and, for annotation mode, a
    store (`annotation.AnnotationStore`)."""
    app = FastAPI(title="qatacov-jax", docs_url=None, redoc_url=None, openapi_url=None)
    cache = _CandidateCache()

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        return _json({"error": e.message}, e.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError) -> JSONResponse:
        parts = []
        for err in e.errors():
            where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body",))
            parts.append(f"{where or 'request'}: {err.get('msg')}")
        return _json({"error": "; ".join(parts)}, 422)

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        path = request.url.path
        if path.startswith("/api/"):
            if settings.token is not None:
                auth = request.headers.get("authorization", "")
                given = auth[7:] if auth.lower().startswith("bearer ") else ""
                given = given or request.headers.get("x-token", "")
                if not secrets.compare_digest(given.encode(), settings.token.encode()):
                    return _json(
                        {"error": "missing or wrong token: open the page as /?token=<--token>"},
                        401,
                    )
            # Refuse an oversized upload from its declared length, before reading it.
            length = request.headers.get("content-length")
            limit = settings.max_upload_bytes + 64 * 1024  # + multipart framing
            if request.method == "POST" and length and length.isdigit() and int(length) > limit:
                return _json(
                    {
                        "error": f"upload of {int(length) / 2**20:.1f} MB is over the "
                        f"--max-upload-mb limit of {settings.max_upload_mb:g} MB"
                    },
                    413,
                )
        return await call_next(request)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/api/config")
    def config() -> JSONResponse:
        return _json(
            {
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
        )

    def analyse(data: bytes, name: str) -> dict[str, Any]:
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

    @app.post("/api/predict")
    async def predict(file: UploadFile = File(...)) -> JSONResponse:
        name = _display_name(file.filename)
        limit = settings.max_upload_bytes
        data = await file.read(limit + 1)
        if len(data) > limit:
            raise ApiError(
                413, f"{name} is over the --max-upload-mb limit of {settings.max_upload_mb:g} MB"
            )
        return _json(await run_in_threadpool(analyse, data, name))

    # ------------------------------------------------------------ annotation mode

    def need_store() -> AnnotationStore:
        if store is None or engine.candidates is None:
            raise ApiError(
                404,
                "annotation mode is off: start the server with --annotate IMAGES_DIR "
                "--annotations OUT_DIR",
            )
        return store

    def candidates_of(key: str) -> dict[str, Any]:
        st = need_store()
        hit = cache.get(key)
        if hit is not None:
            return hit
        try:
            img = st.read_xray(key)
        except UnknownImageError:
            raise ApiError(404, f"no image {key!r} in the --annotate folder") from None
        except imageio.ImageReadError as e:
            raise ApiError(422, f"cannot read {key}: {e.reason}") from None
        assert engine.candidates is not None
        probs = engine.candidates.predict(img)
        cs = candidate_set({k: probs[k] for k in engine.candidate_names}, settings.threshold)
        value = {"xray": img, "set": cs}
        cache.put(key, value)
        return value

    def shown_names(key: str, cs: dict[str, Any]) -> dict[str, str]:
        """Shown name -> candidate name, models first then the consensus."""
        models = [k for k in cs["masks"] if k != CONSENSUS]
        pairs = blind_labels(key, models) if settings.blind else {k: k for k in models}
        return {**pairs, CONSENSUS: CONSENSUS}

    @app.get("/api/annotate")
    def progress() -> JSONResponse:
        return _json(need_store().progress())

    def item(key: str) -> dict[str, Any]:
        st = need_store()
        c = candidates_of(key)
        img, cs = c["xray"], c["set"]
        x8 = images.to_uint8(img)
        png, url = images.png_bytes, images.data_url
        shown = shown_names(key, cs)
        cands = []
        for label, name in shown.items():
            m = cs["masks"][name]
            cands.append(
                {
                    "name": label,
                    "mask": url(png(np.where(m, 255, 0).astype(np.uint8))),
                    "overlay": url(png(overlay(x8, m))),
                    **cs["stats"][name],
                }
            )
        accepted = st.accepted_mask(key)
        return {
            "key": key,
            "image": st.sources[key].relative_to(st.images_dir).as_posix(),
            "height": int(img.shape[0]),
            "width": int(img.shape[1]),
            "xray": url(png(x8)),
            "candidates": cands,
            "disagreement": url(png(disagreement_image(x8, cs["votes"]))),
            "disagreement_percent": cs["disagreement_percent"],
            "revision": st.revision(key),
            "mask": None
            if accepted is None
            else url(png(np.where(accepted, 255, 0).astype(np.uint8))),
            "last": st.last_record(key),
            "progress": st.progress(),
        }

    @app.get("/api/annotate/{key}")
    def get_item(key: str) -> JSONResponse:
        return _json(item(key))

    @app.post("/api/annotate/{key}")
    def save_item(key: str, body: dict[str, Any]) -> JSONResponse:
        st = need_store()
        c = candidates_of(key)  # 404 for an unknown key, before anything is parsed
        img, cs = c["xray"], c["set"]
        rev = body.get("revision")
        if not isinstance(rev, int) or isinstance(rev, bool):
            raise ApiError(422, "revision: the integer revision the image was loaded at")
        shown = str(body.get("source") or MANUAL)
        names = shown_names(key, cs)
        if shown != MANUAL and shown not in names:
            raise ApiError(
                422, f"source {shown!r} is none of the candidates {[*names]} nor {MANUAL!r}"
            )
        source = names.get(shown, MANUAL)  # the model's name, also when shown blind
        no_infection = bool(body.get("no_infection"))
        mask = None
        if not no_infection:
            if "mask" not in body:
                raise ApiError(422, "mask: a PNG data URL of the mask, or no_infection: true")
            try:
                mask = images.decode_mask(body["mask"], img.shape)
            except images.UploadError as e:
                raise ApiError(422, f"mask: {e}") from None
        final = np.zeros(img.shape, bool) if mask is None else mask
        d = None if source == MANUAL else dice(cs["masks"][source], final)
        seconds = body.get("seconds")
        seconds = float(seconds) if isinstance(seconds, int | float) else None
        if seconds is not None and not math.isfinite(seconds):
            seconds = None
        annotator = body.get("annotator")
        annotator = str(annotator)[:100].strip() if annotator else None
        try:
            rec = st.save(
                key,
                img,
                mask,
                base_revision=rev,
                source=source,
                dice_chosen_vs_final=d,
                seconds=seconds,
                annotator=annotator,
            )
        except ConflictError as e:
            raise ApiError(409, str(e)) from None
        return _json({"saved": rec, "progress": st.progress()})

    return app


def check_host(host: str, token: str | None) -> None:
    """A non-loopback binding needs a token (anyone on the network could use the server)."""
    if host not in LOOPBACK and not token:
        raise ValueError(
            f"--host {host} makes the server reachable from other machines; give --token "
            "SECRET too (clients then open /?token=SECRET)."
        )


def static_files() -> list[Path]:
    """The page's assets (tests check the package ships them and nothing is remote)."""
    return sorted(Path(str(STATIC)).iterdir())


__all__ = ["CONSENSUS", "Settings", "check_host", "create_app", "static_files"]
