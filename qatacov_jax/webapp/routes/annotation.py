"""The annotation API, under `/api/annotate` (docs/annotation.md#the-web-api):

    GET  ""        the session: progress, settings, next image, (items=true) the job list
    GET  /{key}    X-ray, candidates (blind: shuffled labels only), votes, decisions so far
    POST /{key}    a decision (`schemas.DecisionRequest`); 409 on a conflict

and, on a review server (no model loaded), `review_router`'s `/api/config` and a
`/api/predict` that says there is no model. Blind, no answer carries a model name, run or
path: records are passed through `public_record`, tallies through `shown_tally`.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Query

from qatacov_jax.annotation import decisions as dec
from qatacov_jax.annotation.candidates import dice
from qatacov_jax.data import imageio
from qatacov_jax.webapp import images
from qatacov_jax.webapp.annotation import (
    CONSENSUS,
    MANUAL,
    AnnotationSession,
    Candidates,
    ConflictError,
    UnknownImageError,
    blind_labels,
    candidate_set,
    disagreement_image,
    overlay,
)
from qatacov_jax.webapp.deps import ApiError, SettingsDep, StoreDep
from qatacov_jax.webapp.schemas import (
    AnnotationItem,
    DecisionRequest,
    DecisionResponse,
    ErrorResponse,
    ReviewConfig,
    Session,
)

router = APIRouter()
review_router = APIRouter()  # under /api, review servers only

NOT_FOUND = {404: {"model": ErrorResponse, "description": "annotation mode off, or no such image"}}
Annotator = Annotated[str | None, Query(description="who asks (their next image, their vote)")]


def get_candidates(key: str, session: StoreDep) -> Candidates:
    """The image `key`'s candidates; 404 for an unknown key. A dependency, so that a
    decision on an unknown key is a 404 before its body is validated."""
    try:
        return session.candidates(key)
    except (UnknownImageError, KeyError):
        raise ApiError(404, f"no image {key!r} in this annotation session") from None
    except imageio.ImageReadError as e:
        raise ApiError(422, f"cannot read {key}: {e.reason}") from None


CandidatesDep = Annotated[Candidates, Depends(get_candidates)]


def shown_names(key: str, c: Candidates, blind: bool) -> dict[str, str]:
    """Shown name -> candidate name: the models, `manual` (a reference), and the consensus
    of two or more models; blind, shuffled labels and no consensus."""
    models = [k for k in c.masks if k != MANUAL]
    listed = models + ([MANUAL] if MANUAL in c.masks else [])
    if blind:
        return blind_labels(key, listed)
    return {k: k for k in listed} | ({CONSENSUS: CONSENSUS} if len(models) >= 2 else {})


def _masks(c: Candidates) -> tuple[dict[str, np.ndarray], dict[str, Any] | None]:
    """Every candidate's mask by real name (with the consensus), and the models' set."""
    models = {k: v for k, v in c.masks.items() if k != MANUAL}
    cs = candidate_set(models) if models else None
    return {**c.masks, **({CONSENSUS: cs["masks"][CONSENSUS]} if cs else {})}, cs


def public_record(rec: dict[str, Any] | None, labels: dict[str, str]) -> dict[str, Any] | None:
    """A decision as the API shows it: the candidate by its shown name (`labels`: real ->
    shown), never the model's run, fold, the source path or the mask file."""
    if rec is None:
        return None
    keep = ("key", "image", "stage", "revision", "outcome", "annotator", "adjudicate")
    out = {k: rec.get(k) for k in keep}
    out.update({k: rec.get(k) for k in ("mask_area_percent", "seconds", "note", "saved_at")})
    chosen = rec.get("chosen")
    drawn = rec.get("outcome") == dec.DRAW  # `chosen` is "manual" then, not the reference
    out["candidate"] = None if chosen is None or drawn else labels.get(chosen, "?")
    out["dice_candidate_vs_final"] = rec.get("dice_chosen_vs_final")
    return out


def shown_tally(tally: dict[str, int], labels: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for choice, n in tally.items():
        kind, _, who = choice.partition(":")
        name = (
            labels.get(who, "?")
            if kind == "candidate"
            else f"draw ({who})"
            if kind == "draw"
            else choice
        )
        out[name] = out.get(name, 0) + n
    return out


def status_of(session: AnnotationSession, key: str, labels: dict[str, str]) -> dict[str, Any]:
    res = session.store.status(key)
    visible = res.state != dec.OPEN or session.store.votes == 1
    return {
        "state": res.state,
        "outcome": res.outcome,
        "votes_needed": session.store.votes,
        "votes_cast": len(res.votes),
        "tally": shown_tally(res.tally, labels) if visible else None,
        "reason": res.reason,
    }


def _labels(key: str, c: Candidates, blind: bool) -> dict[str, str]:
    """Real candidate name -> shown name."""
    return {real: shown for shown, real in shown_names(key, c, blind).items()}


@router.get(
    "",
    response_model=Session,
    responses={**NOT_FOUND, 422: {"model": ErrorResponse, "description": "a bad query"}},
)
def session_info(
    session: StoreDep, settings: SettingsDep, annotator: Annotator = None, items: bool = False
) -> dict[str, Any]:
    out = {**session.progress(annotator), "settings": session.settings(settings.blind)}
    if items:
        store = session.store
        rows = []
        for key in session.order:
            res, mine = store.status(key), store.mine(key, annotator)
            rows.append(
                {
                    "key": key,
                    "image": store.catalog[key].image,
                    "state": res.state,
                    "votes_cast": len(res.votes),
                    "mine": None if mine is None else mine["outcome"],
                }
            )
        out["items"] = rows
    return out


@router.get(
    "/{key}",
    response_model=AnnotationItem,
    responses={**NOT_FOUND, 422: {"model": ErrorResponse, "description": "unreadable X-ray"}},
)
def get_item(
    key: str,
    session: StoreDep,
    settings: SettingsDep,
    c: CandidatesDep,
    annotator: Annotator = None,
) -> dict[str, Any]:
    blind, store = settings.blind, session.store
    x8 = images.to_uint8(c.xray)
    png, url = images.png_bytes, images.data_url
    masks, cs = _masks(c)
    cands = []
    for label, name in shown_names(key, c, blind).items():
        m = masks[name]
        stats = (cs or {}).get("stats", {}).get(name) if name != MANUAL else None
        agree = stats["dice_with_models"] if stats else _mean_dice(m, c, name)
        cands.append(
            {
                "name": label,
                "mask": url(png(np.where(m, 255, 0).astype(np.uint8))),
                "overlay": url(png(overlay(x8, m))),
                "area_percent": 100.0 * float(m.mean()),
                "dice_with_models": None if blind or not math.isfinite(agree) else agree,
                "probability": None
                if blind or not c.probs or name not in c.probs
                else url(images.encode_probability(c.probs[name])),
            }
        )
    labels = _labels(key, c, blind)
    res = store.status(key)
    history = store.records(key)
    if res.state == dec.OPEN and store.votes > 1:
        history = [r for r in history if annotator and r.get("annotator") == annotator]
    history = [public_record(r, labels) for r in history]
    accepted = store.accepted_mask(key)
    show_split = cs is not None and len(c.masks) - (MANUAL in c.masks) >= 2 and not blind
    return {
        "key": key,
        "image": store.catalog[key].image,
        "height": int(c.xray.shape[0]),
        "width": int(c.xray.shape[1]),
        "xray": url(png(x8)),
        "stage": session.source.stage,
        "target": session.source.target,
        "candidates": cands,
        "disagreement": url(png(disagreement_image(x8, cs["votes"]))) if show_split else None,
        "disagreement_percent": cs["disagreement_percent"] if show_split else None,
        "revision": store.revision(key),
        "status": status_of(session, key, labels),
        "mask": None if accepted is None else url(png(np.where(accepted, 255, 0).astype(np.uint8))),
        "mine": public_record(store.mine(key, annotator), labels),
        "history": history,
        "last": history[-1] if history else None,
        "progress": session.progress(annotator),
    }


def _mean_dice(mask: np.ndarray, c: Candidates, name: str) -> float:
    others = [dice(mask, m) for k, m in c.masks.items() if k not in (name, MANUAL)]
    return float(np.mean(others)) if others else float("nan")


@router.post(
    "/{key}",
    response_model=DecisionResponse,
    responses={
        **NOT_FOUND,
        409: {"model": ErrorResponse, "description": "a decision it would override came first"},
        422: {"model": ErrorResponse, "description": "a bad outcome, candidate or mask"},
    },
)
def decide(
    key: str, body: DecisionRequest, session: StoreDep, settings: SettingsDep, c: CandidatesDep
) -> dict[str, Any]:
    annotator = body.annotator.strip()[:100]
    if not annotator:
        raise ApiError(422, "annotator: give your name before saving (it is your vote)")
    names = shown_names(key, c, settings.blind)
    label = body.candidate or body.source
    if label == MANUAL and MANUAL not in names:
        label = None  # the earlier page's "drawn by hand"
    if body.outcome is None and not body.no_infection and body.mask is None and label is None:
        raise ApiError(422, "outcome (pick, correct, draw, ...) or a mask: nothing was decided")
    outcome = body.outcome or dec.legacy_outcome(body.no_infection, label, body.mask is not None)
    if label is not None and label not in names:
        raise ApiError(422, f"candidate {label!r} is none of the candidates {[*names]}")
    choosable = [n for n in names if names[n] != CONSENSUS]
    if label is None and outcome in (dec.ACCEPT, dec.REJECT) and len(choosable) == 1:
        label = choosable[0]
    try:
        dec.check(outcome, session.source.target, label, body.mask is not None, len(choosable))
        given = None if body.mask is None else images.decode_mask(body.mask, c.xray.shape)
    except dec.DecisionError as e:
        raise ApiError(422, str(e)) from None
    except images.UploadError as e:
        raise ApiError(422, f"mask: {e}") from None
    if given is not None and outcome in dec.TAKES_MASK and not given.any():
        raise ApiError(
            422,
            "mask: the mask is empty; an empty canvas is not a decision. Send outcome "
            "no_infection for an X-ray without visible infection, or exclude.",
        )
    masks, _ = _masks(c)
    real = None if label is None else names[label]
    final = _final_mask(outcome, given, None if real is None else masks[real], c.xray.shape)
    fields = _fields(session, key, body, label, real, final, masks)
    try:
        rec = session.store.decide(
            key,
            annotator=annotator,
            outcome=outcome,
            xray=c.xray,
            mask=final,
            chosen=MANUAL if outcome == dec.DRAW else real,
            revision=body.revision,
            adjudicate=body.adjudicate,
            fields=fields,
        )
    except ConflictError as e:
        raise ApiError(409, str(e)) from None
    labels = _labels(key, c, settings.blind)
    return {
        "saved": public_record(rec, labels),
        "status": status_of(session, key, labels),
        "progress": session.progress(annotator),
        "next": session.store.next_key(session.order, annotator),
    }


def _final_mask(
    outcome: str, given: np.ndarray | None, candidate: np.ndarray | None, shape: tuple[int, ...]
) -> np.ndarray | None:
    """The mask a decision implies (`store.AnnotationStore.decide`'s `mask`)."""
    if outcome in dec.AS_IS:
        return candidate
    if outcome == dec.NO_INFECTION:
        return np.zeros(shape, bool)
    if outcome == dec.UNSURE:
        return given if given is not None else candidate
    return given  # correct / reject / draw: the edited mask; exclude / skip: None


def _fields(
    session: AnnotationSession,
    key: str,
    body: DecisionRequest,
    label: str | None,
    real: str | None,
    final: np.ndarray | None,
    masks: dict[str, np.ndarray],
) -> dict[str, Any]:
    """What else a decision records: the shown name, time, note, the Dice of the final mask
    to its candidate, every candidate offered, and the chosen model's run and fold."""
    seconds = body.seconds if body.seconds is not None and math.isfinite(body.seconds) else None
    out: dict[str, Any] = {
        "shown": label,
        "seconds": seconds,
        "note": body.note,
        "candidates": sorted(k for k in masks if k != CONSENSUS),
        "dice_chosen_vs_final": None if real is None or final is None else dice(masks[real], final),
    }
    stored = getattr(session.source, "store", None)
    if real is not None and stored is not None:
        info = stored.images.get(key, {}).get("candidates", {}).get(real)
        if info:
            out.update(run=info.get("run"), fold=info.get("fold"))
    return out


# ------------------------------------------------------------------ review servers


@review_router.get("/config", response_model=ReviewConfig)
async def review_config(session: StoreDep, settings: SettingsDep) -> dict[str, Any]:
    return {
        "candidates": [] if settings.blind else list(session.source.models),
        "blind": settings.blind,
        "threshold": getattr(getattr(session.source, "store", None), "manifest", {}).get(
            "threshold", settings.threshold
        ),
        "max_upload_mb": settings.max_upload_mb,
    }


@review_router.post("/predict", responses={404: {"model": ErrorResponse}})
async def no_model() -> None:
    raise ApiError(
        404, "no model is loaded on this annotation server (--review or --annotate alone)"
    )
