"""Paper 1's two-stage annotation loop, simulated end to end on the synthetic set.

    .venv/bin/python benchmarks/annotation_sim.py --size 64 --stage1 24 --pool 24 --epochs 60 \
        --json benchmarks/results/annotation_sim.json \
        --markdown benchmarks/results/annotation_sim.md

(`--epochs 1`, the smoke run: with 16 training images per fold the tiny model sees 4 batches
and learns nothing of the lesions, so every candidate is empty; at 60 epochs, 240 steps, it
learns some. Either takes a few minutes of CPU: compilation, not steps, dominates.)

The synthetic X-rays have exact infection masks: the hidden truth, which the simulated
people never see directly.

1. Doctors draw Stage-I masks: the truth, dilated or eroded by a pixel or two, shifted, a
   lesion sometimes missed or a spot added (`manual_mask`).
2. Stage I (`annotation.stage`, --folds K): each configuration is cross-validated on them;
   every image gets its out-of-fold candidates. The review (the real web API, no model
   loaded) shows the manual mask among them; a simulated doctor picks the candidate
   closest to the truth, except with probability --error-rate a random other one.
3. Stage II (--pool): every configuration trained on all Stage-I masks proposes masks for
   the pool; the doctor picks the closest (same error rate), or, when even the closest has
   a Dice to the truth under --reject-below, rejects all and draws a manual mask.
4. Order: the pool reviewed in --order disagreement, entropy and random order; before its
   review an image keeps the models' consensus mask. The quality curve (mean Dice to the
   truth over the pool after k reviews) and the reviews needed to reach 90% of the total
   gain say how much faster disagreement order raises quality than random order.

Reported: Dice to the truth (mean over images) of the manual masks, the Stage-I candidates
and choices, the Stage-II candidates and accepted masks; `annotation_report`'s rates. The
configurations are the tiny model (`models.tiny`) with different seeds and learning rates,
for speed: the numbers measure the loop, not the papers' networks. Nothing retrains between
review batches (paper 2's loop does).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from qatacov_jax.runtime import xla_flags  # noqa: E402

xla_flags.apply_defaults()  # before JAX starts its backend

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import ndimage  # noqa: E402

from qatacov_jax.annotation import layout  # noqa: E402
from qatacov_jax.annotation.candidates import CandidateStore, dice  # noqa: E402
from qatacov_jax.runtime.files import write_json, write_text  # noqa: E402


def positives(n: int, size: int, seed: int) -> list[Any]:
    """The first `n` COVID-19 examples (with a visible lesion) of the synthetic set."""
    from qatacov_jax.data import synthetic

    out, i = [], 0
    while len(out) < n:
        if synthetic.is_positive(seed, i, 0.5):
            ex = synthetic.generate(seed, i, size, 0.5)
            if ex.mask.any():
                out.append(ex)
        i += 1
    return out


def manual_mask(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A doctor's hand-drawn mask of `truth`: the border a pixel out or in (per 64 pixels
    of image side), shifted by up to a pixel, a lesion missed (p 0.15) or a spot added
    (p 0.15)."""
    step = max(1, truth.shape[0] // 64)
    grow = rng.random() < 0.5
    m = (ndimage.binary_dilation if grow else ndimage.binary_erosion)(truth, iterations=step)
    if not grow and m.sum() < truth.sum() / 3:  # a thin lesion would vanish: trace it
        m = truth.copy()
    m = np.roll(m, tuple(rng.integers(-step, step + 1, 2)), axis=(0, 1))
    labels, n = ndimage.label(m)
    if n > 1 and rng.random() < 0.15:
        m &= labels != rng.integers(1, n + 1)
    if rng.random() < 0.15:
        h, w = m.shape
        yy, xx = np.mgrid[0:h, 0:w]
        cy, cx = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4)
        m |= np.hypot(yy - cy, xx - cx) < 2 * step
    return m


def tiny_configs(n: int, size: int, epochs: int, seed: int) -> dict[str, Any]:
    """`n` tiny-model configurations (seeds and learning rates differ)."""
    from configs import default

    out = {}
    for j in range(n):
        c = default.get_config()
        c.model.arch = c.model.encoder = "tiny"
        c.model.preprocessing = "unit"
        c.data.image_size = size
        c.data.num_threads = 1
        c.batch_size = 4
        c.num_epochs = epochs
        c.optim.lr = (1e-2, 3e-3, 3e-2)[j % 3]
        c.seed = seed + j
        c.log_every_steps = 5
        c.checkpoint_every_steps = 0
        c.num_devices = 1
        out[f"tiny_{chr(ord('a') + j)}"] = c
    return out


def write_masks(folder: Path, keys: list[str], xrays: list[np.ndarray], masks: list[np.ndarray]):
    for key, x, m in zip(keys, xrays, masks, strict=True):
        img, mp = layout.accepted_paths(folder, key, "infection")
        img.parent.mkdir(parents=True, exist_ok=True)
        mp.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x).save(img)
        Image.fromarray(np.where(m, 255, 0).astype(np.uint8)).save(mp)


def review(
    candidates: Path,
    out: Path,
    truth: dict[str, np.ndarray],
    rng: np.random.Generator,
    *,
    error_rate: float,
    reference: Path | None = None,
    reject_below: float | None = None,
    draw: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """A simulated doctor decides every image through the web API; returns the masks their
    decisions accepted, by key."""
    from fastapi.testclient import TestClient

    from qatacov_jax.webapp import images
    from qatacov_jax.webapp.annotation import AnnotationSession, StoredCandidates
    from qatacov_jax.webapp.app import Settings, create_app

    session = AnnotationSession(StoredCandidates(candidates), out, reference=reference)
    client = TestClient(create_app(None, Settings(), session))
    url = lambda m: images.data_url(images.png_bytes(np.where(m, 255, 0).astype(np.uint8)))  # noqa: E731
    accepted = {}
    for key in session.order:
        item = client.get(f"/api/annotate/{key}").json()
        cands = {
            c["name"]: np.asarray(Image.open(_png(c["mask"]))) > 0
            for c in item["candidates"]
            if c["name"] != "consensus"
        }
        scores = {n: dice(m, truth[key]) for n, m in cands.items()}
        best = max(scores, key=scores.get)
        body: dict[str, Any] = {"annotator": "sim", "seconds": float(5 + 2 * len(cands))}
        if reject_below is not None and scores[best] < reject_below:
            body.update(outcome="draw", mask=url(draw[key]))
            accepted[key] = draw[key]
        else:
            others = [n for n in cands if n != best]
            pick = (
                others[rng.integers(len(others))] if others and rng.random() < error_rate else best
            )
            body.update(outcome="pick", candidate=pick)
            accepted[key] = cands[pick]
        r = client.post(f"/api/annotate/{key}", json=body)
        assert r.status_code == 200, r.text
    return accepted


def _png(url: str):
    import base64
    import io

    return io.BytesIO(base64.b64decode(url.split(",", 1)[1]))


def order_curves(
    store: CandidateStore, truth: dict[str, np.ndarray], final: dict[str, np.ndarray], seed: int
) -> dict[str, Any]:
    """Mean Dice to the truth over the pool after k reviews, per review order."""
    keys = store.keys()
    before = {}
    for k in keys:
        ms = list(store.masks(k).values())
        before[k] = np.mean(np.stack(ms), axis=0) > 0.5 if len(ms) > 1 else ms[0]
    gain = {k: dice(final[k], truth[k]) - dice(before[k], truth[k]) for k in keys}
    start = float(np.mean([dice(before[k], truth[k]) for k in keys]))

    def curve(order: list[str]) -> np.ndarray:
        return start + np.concatenate([[0.0], np.cumsum([gain[k] for k in order])]) / len(keys)

    orders = {
        o: sorted(keys, key=lambda k: (-store.score(k, o), k)) for o in ("disagreement", "entropy")
    }
    rng = np.random.default_rng(seed)
    randoms = [curve(list(rng.permutation(keys))) for _ in range(50)]
    curves = {o: curve(v) for o, v in orders.items()} | {"random": np.mean(randoms, axis=0)}
    total = curves["random"][-1] - start
    out = {}
    for name, c in curves.items():
        reached = np.flatnonzero(c - start >= 0.9 * total) if total > 0 else np.asarray([0])
        out[name] = {
            "area_under_curve": float(np.mean(c)),
            "reviews_to_90pct_of_gain": int(reached[0]) if reached.size else len(keys),
            "curve": [round(float(x), 4) for x in c],
        }
    return {"start": start, "end": float(curves["random"][-1]), "orders": out}


def mean_dice(masks: dict[str, np.ndarray], truth: dict[str, np.ndarray]) -> float:
    return float(np.mean([dice(m, truth[k]) for k, m in masks.items()]))


def candidates_dice(store: CandidateStore, truth: dict[str, np.ndarray]) -> dict[str, float]:
    per: dict[str, list[float]] = {m: [] for m in store.models}
    for k in store.keys():
        for m, mask in store.masks(k).items():
            per[m].append(dice(mask, truth[k]))
    return {m: float(np.mean(v)) for m, v in per.items()}


def simulate(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from qatacov_jax.annotation.report import build_report
    from qatacov_jax.annotation.stage import StageSpec, run_stage

    rng = np.random.default_rng(args.seed)
    exs = positives(args.stage1 + args.pool, args.size, args.seed)
    keys = [f"covid_{i}" for i in range(len(exs))]
    truth = {k: ex.mask > 0 for k, ex in zip(keys, exs, strict=True)}
    manual = {k: manual_mask(truth[k], rng) for k in keys}
    s1, pool_keys = keys[: args.stage1], keys[args.stage1 :]
    write_masks(work / "manual", s1, [e.image for e in exs[: args.stage1]], [manual[k] for k in s1])
    configs = tiny_configs(args.models, args.size, args.epochs, args.seed)
    t0 = time.perf_counter()
    run_stage(StageSpec(work / "manual", "infection", work / "stage1", configs, folds=args.folds))
    t1 = time.perf_counter()
    store1 = CandidateStore(work / "stage1" / "candidates")
    chosen1 = review(
        store1.root,
        work / "accepted",
        truth,
        rng,
        error_rate=args.error_rate,
        reference=work / "manual",
    )
    pool = work / "pool"
    pool.mkdir()
    for k, ex in zip(pool_keys, exs[args.stage1 :], strict=True):
        Image.fromarray(ex.image).save(pool / f"{k}.png")
    truth |= {f"pool__{k}": truth[k] for k in pool_keys}
    draw = {f"pool__{k}": manual[k] for k in pool_keys}
    t2 = time.perf_counter()
    run_stage(StageSpec(work / "accepted", "infection", work / "stage2", configs, pool=pool))
    t3 = time.perf_counter()
    store2 = CandidateStore(work / "stage2" / "candidates")
    final2 = review(
        store2.root,
        work / "accepted",
        truth,
        rng,
        error_rate=args.error_rate,
        reject_below=args.reject_below,
        draw=draw,
    )
    report = build_report(work / "accepted")["stages"]
    return {
        "dice_to_truth": {
            "manual_masks_stage1": mean_dice({k: manual[k] for k in s1}, truth),
            "stage1_candidates": candidates_dice(store1, truth),
            "stage1_choices": mean_dice(chosen1, truth),
            "stage2_candidates": candidates_dice(store2, truth),
            "stage2_accepted": mean_dice(final2, truth),
            "manual_masks_pool_for_comparison": mean_dice({k: draw[k] for k in final2}, truth),
        },
        "rates": {
            s: {
                "machine_preferred": r["annotators"]["all"]["machine_preferred"],
                "rejected_all": r["annotators"]["all"]["rejected_all"],
            }
            for s, r in report.items()
        },
        "order": order_curves(store2, truth, final2, args.seed),
        "seconds": {"stage1_training": t1 - t0, "stage2_training": t3 - t2},
    }


def markdown(result: dict[str, Any]) -> str:
    d, o = result["dice_to_truth"], result["order"]
    lines = [
        "# Simulated two-stage annotation (synthetic set)",
        "",
        f"`{result['command']}`",
        "",
        "| masks | mean Dice to the hidden truth |",
        "|---|---|",
        f"| Stage I manual masks (simulated doctors) | {d['manual_masks_stage1']:.3f} |",
        *[
            f"| Stage I out-of-fold candidates, {m} | {v:.3f} |"
            for m, v in d["stage1_candidates"].items()
        ],
        f"| Stage I choices (blind pick incl. manual) | {d['stage1_choices']:.3f} |",
        *[f"| Stage II candidates, {m} | {v:.3f} |" for m, v in d["stage2_candidates"].items()],
        f"| Stage II accepted masks | {d['stage2_accepted']:.3f} |",
        f"| (manual masks of the pool, for comparison) | {d['manual_masks_pool_for_comparison']:.3f} |",
        "",
        "| stage | machine mask preferred over manual | rejected all (drew) |",
        "|---|---|---|",
        *[
            f"| {s} | {_pct(r['machine_preferred'])} | {_pct(r['rejected_all'])} |"
            for s, r in result["rates"].items()
        ],
        "",
        f"Review order over the Stage-II pool (mean Dice {o['start']:.3f} before any review, "
        f"{o['end']:.3f} after all):",
        "",
        "| order | mean quality over the review (area under the curve) | reviews to 90% of the gain |",
        "|---|---|---|",
        *[
            f"| {name} | {v['area_under_curve']:.4f} | {v['reviews_to_90pct_of_gain']} |"
            for name, v in o["orders"].items()
        ],
    ]
    return "\n".join(lines) + "\n"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=64, help="image side (pixels, >= 32)")
    p.add_argument("--stage1", type=int, default=24, help="Stage-I images (manual masks)")
    p.add_argument("--pool", type=int, default=24, help="Stage-II pool images")
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--models", type=int, default=3, help="configurations (tiny model)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--error-rate", type=float, default=0.1, help="wrong picks' probability")
    p.add_argument("--reject-below", type=float, default=0.5, help="draw when best Dice < this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="keep the stages here (default: a temporary folder)")
    p.add_argument("--json")
    p.add_argument("--markdown")
    args = p.parse_args(argv)
    for name in ("stage1", "pool", "models", "epochs"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be a positive integer")
    if args.folds < 2:
        p.error("--folds must be at least 2")
    if args.size < 32 or args.size % 4:
        p.error("--size must be a multiple of 4, at least 32")
    if not 0.0 <= args.error_rate <= 1.0:
        p.error("--error-rate must be in [0, 1]")
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="annotation_sim_"))
    try:
        result = simulate(args, work)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    given = sys.argv[1:] if argv is None else argv
    result["command"] = "python benchmarks/annotation_sim.py " + " ".join(given)
    result["settings"] = vars(args)
    text = markdown(result)
    print(text)
    if args.json:
        write_json(args.json, result)
    if args.markdown:
        write_text(args.markdown, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
