"""The annotation API, under `/api/annotate`:

    GET  ""        progress: total, done, pending, next key
    GET  /{key}    X-ray, candidate masks, consensus, disagreement, revision
    POST /{key}    save (`schemas.SaveRequest`) -> provenance record; 409 on a conflict

The candidates of an image are a device call, so the last few images' are cached
(`CandidateCache`, on `app.state.candidates`).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import threading
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Request

from qatacov_jax.data import imageio
from qatacov_jax.webapp import images
from qatacov_jax.webapp.annotation import (
    CONSENSUS,
    MANUAL,
    ConflictError,
    UnknownImageError,
    blind_labels,
    candidate_set,
    dice,
    disagreement_image,
    overlay,
)
from qatacov_jax.webapp.deps import ApiError, EngineDep, SettingsDep, StoreDep
from qatacov_jax.webapp.schemas import (
    AnnotationItem,
    ErrorResponse,
    Progress,
    SaveRequest,
    SaveResponse,
)

router = APIRouter()


@dataclasses.dataclass(frozen=True)
class Candidates:
    """One image's X-ray ((H, W) float [0, 1]) and `annotation.candidate_set` of it."""

    xray: np.ndarray
    cset: dict[str, Any]


class CandidateCache:
    """The last few images' candidate sets (computing them is a device call)."""

    def __init__(self, size: int = 16) -> None:
        self._items: collections.OrderedDict[str, Candidates] = collections.OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: str) -> Candidates | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            return None

    def put(self, key: str, value: Candidates) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


def get_candidates(
    key: str, request: Request, store: StoreDep, engine: EngineDep, settings: SettingsDep
) -> Candidates:
    """The image `key`'s candidates; 404 for an unknown key. A dependency, so that a save
    to an unknown key is a 404 before its body is validated."""
    cache: CandidateCache = request.app.state.candidates
    hit = cache.get(key)
    if hit is not None:
        return hit
    try:
        img = store.read_xray(key)
    except UnknownImageError:
        raise ApiError(404, f"no image {key!r} in the --annotate folder") from None
    except imageio.ImageReadError as e:
        raise ApiError(422, f"cannot read {key}: {e.reason}") from None
    assert engine.candidates is not None  # get_store checked annotation mode
    probs = engine.candidates.predict(img)
    cs = candidate_set({k: probs[k] for k in engine.candidate_names}, settings.threshold)
    value = Candidates(img, cs)
    cache.put(key, value)
    return value


CandidatesDep = Annotated[Candidates, Depends(get_candidates)]

NOT_FOUND = {404: {"model": ErrorResponse, "description": "annotation mode off, or no such image"}}


def shown_names(key: str, cs: dict[str, Any], blind: bool) -> dict[str, str]:
    """Shown name -> candidate name, models first then the consensus."""
    models = [k for k in cs["masks"] if k != CONSENSUS]
    pairs = blind_labels(key, models) if blind else {k: k for k in models}
    return {**pairs, CONSENSUS: CONSENSUS}


@router.get("", response_model=Progress, responses=NOT_FOUND)
def progress(store: StoreDep) -> dict[str, Any]:
    return store.progress()


def _mask_url(mask: np.ndarray) -> str:
    """(H, W) bool -> 0/255 PNG data URL."""
    return images.data_url(images.png_bytes(np.where(mask, 255, 0).astype(np.uint8)))


@router.get(
    "/{key}",
    response_model=AnnotationItem,
    response_model_exclude_unset=True,
    responses={**NOT_FOUND, 422: {"model": ErrorResponse, "description": "unreadable X-ray"}},
)
def get_item(key: str, store: StoreDep, settings: SettingsDep, c: CandidatesDep) -> dict[str, Any]:
    img, cs = c.xray, c.cset
    x8 = images.to_uint8(img)
    png, url = images.png_bytes, images.data_url
    cands = [
        {
            "name": label,
            "mask": _mask_url(cs["masks"][name]),
            "overlay": url(png(overlay(x8, cs["masks"][name]))),
            **cs["stats"][name],
        }
        for label, name in shown_names(key, cs, settings.blind).items()
    ]
    accepted = store.accepted_mask(key)
    return {
        "key": key,
        "image": store.sources[key].relative_to(store.images_dir).as_posix(),
        "height": int(img.shape[0]),
        "width": int(img.shape[1]),
        "xray": url(png(x8)),
        "candidates": cands,
        "disagreement": url(png(disagreement_image(x8, cs["votes"]))),
        "disagreement_percent": cs["disagreement_percent"],
        "revision": store.revision(key),
        "mask": None if accepted is None else _mask_url(accepted),
        "last": store.last_record(key),
        "progress": store.progress(),
    }


@router.post(
    "/{key}",
    response_model=SaveResponse,
    response_model_exclude_unset=True,
    responses={
        **NOT_FOUND,
        409: {"model": ErrorResponse, "description": "saved by someone else since loaded"},
        422: {"model": ErrorResponse, "description": "a bad body, source or mask"},
    },
)
def save_item(
    key: str, body: SaveRequest, store: StoreDep, settings: SettingsDep, c: CandidatesDep
) -> dict[str, Any]:
    img, cs = c.xray, c.cset
    shown = body.source or MANUAL
    names = shown_names(key, cs, settings.blind)
    if shown != MANUAL and shown not in names:
        raise ApiError(422, f"source {shown!r} is none of the candidates {[*names]} nor {MANUAL!r}")
    source = names.get(shown, MANUAL)  # the model's name, also when shown blind
    mask = None
    if not body.no_infection:
        if body.mask is None:
            raise ApiError(422, "mask: a PNG data URL of the mask, or no_infection: true")
        try:
            mask = images.decode_mask(body.mask, img.shape)
        except images.UploadError as e:
            raise ApiError(422, f"mask: {e}") from None
    final = np.zeros(img.shape, bool) if mask is None else mask
    seconds = body.seconds if body.seconds is not None and math.isfinite(body.seconds) else None
    try:
        rec = store.save(
            key,
            img,
            mask,
            base_revision=body.revision,
            source=source,
            dice_chosen_vs_final=None if source == MANUAL else dice(cs["masks"][source], final),
            seconds=seconds,
            annotator=body.annotator[:100].strip() if body.annotator else None,
        )
    except ConflictError as e:
        raise ApiError(409, str(e)) from None
    return {"saved": rec, "progress": store.progress()}
