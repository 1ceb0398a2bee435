"""What an annotation folder's decisions say: `scripts/annotation_report.py OUT`.

Per stage (I, II, or `live`) and per annotator (and all together), over each annotator's
vote on each image (their latest non-skip decision):

* machine preferred: of the votes on images whose candidates included the doctors' own
  mask (`manual`, `--reference`), the fraction that chose a model's mask over it (picked or
  corrected); paper 1 reports three out of five;
* rejected all: the fraction of mask votes that drew a new mask instead of any candidate
  (paper 1, Stage II: under 5%); corrected: the fraction that edited a candidate;
* agreement on images with two or more votes: Fleiss' kappa of the choices (a candidate,
  draw, no infection, exclude, unsure; variable raters per image) and the mean pairwise
  Dice of the masks the votes imply;
* time per image: the seconds an annotator spent on an image (all their decisions on it).

Written as Markdown, JSON and a PNG.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qatacov_jax.annotation import decisions as dec
from qatacov_jax.annotation.candidates import dice, read_mask
from qatacov_jax.annotation.store import PROVENANCE
from qatacov_jax.runtime.files import write_json, write_text

log = logging.getLogger(__name__)

ALL = "all"
MASK_VOTES = (dec.PICK, dec.CORRECT, dec.DRAW, dec.NO_INFECTION, dec.ACCEPT, dec.REJECT)
PAPER = {"machine_preferred": 3 / 5, "rejected_all": 0.05}


def load_records(out_dir: str | Path) -> list[dict[str, Any]]:
    """Every decision of `out_dir/annotations.jsonl` (earlier stores' lines converted)."""
    path = Path(out_dir) / PROVENANCE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: give the --annotations folder of a server")
    recs = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                recs.append(dec.from_legacy_record(json.loads(line)))
            except (json.JSONDecodeError, TypeError):
                log.warning("%s:%d: unreadable decision line skipped", path, i)
    return recs


def fleiss_kappa(items: Sequence[Mapping[str, int]]) -> float:
    """Fleiss' kappa with a variable number of raters per item.

    Args:
      items: per item, category -> raters who chose it (items with fewer than two raters
        are ignored).

    Returns:
      kappa; NaN without an item of two raters, 1.0 when all raters of all items used the
      same single category (agreement is then perfect but kappa's chance term is 1).
    """
    rated = [dict(i) for i in items if sum(i.values()) >= 2]
    if not rated:
        return float("nan")
    p_items, totals = [], collections.Counter()
    for item in rated:
        n = sum(item.values())
        p_items.append((sum(c * c for c in item.values()) - n) / (n * (n - 1)))
        totals.update(item)
    p_bar = float(np.mean(p_items))
    all_n = sum(totals.values())
    p_e = sum((c / all_n) ** 2 for c in totals.values())
    if p_e >= 1.0:
        return 1.0 if p_bar >= 1.0 else float("nan")
    return (p_bar - p_e) / (1.0 - p_e)


def _category(vote: Mapping[str, Any]) -> str:
    return "draw" if vote["outcome"] == dec.DRAW else dec.choice(vote)


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def summarize(votes: Sequence[Mapping[str, Any]], seconds: Iterable[float]) -> dict[str, Any]:
    """The counts and rates of one group of votes (docs in the module)."""
    outcomes = collections.Counter(v["outcome"] for v in votes)
    with_manual = [
        v
        for v in votes
        if dec.MANUAL in (v.get("candidates") or []) and v["outcome"] in dec.TAKES_CANDIDATE
    ]
    machine = sum(1 for v in with_manual if v.get("chosen") not in (None, dec.MANUAL))
    mask_votes = [v for v in votes if v["outcome"] in MASK_VOTES]
    drawn = sum(1 for v in mask_votes if v["outcome"] == dec.DRAW)
    edited = sum(1 for v in mask_votes if v["outcome"] in (dec.CORRECT, dec.REJECT))
    edits = [
        float(v["dice_chosen_vs_final"])
        for v in mask_votes
        if v["outcome"] in (dec.CORRECT, dec.REJECT) and v.get("dice_chosen_vs_final") is not None
    ]
    secs = [float(s) for s in seconds]
    return {
        "votes": len(votes),
        "outcomes": dict(sorted(outcomes.items())),
        "machine_vs_manual": {"machine": machine, "manual": len(with_manual) - machine},
        "machine_preferred": _rate(machine, len(with_manual)),
        "rejected_all": _rate(drawn, len(mask_votes)),
        "corrected": _rate(edited, len(mask_votes)),
        "dice_candidate_vs_corrected": float(np.mean(edits)) if edits else None,
        "seconds_per_image": {
            "images": len(secs),
            "median": float(np.median(secs)) if secs else None,
            "mean": float(np.mean(secs)) if secs else None,
        },
    }


def agreement(out_dir: Path, votes_by_image: Mapping[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Fleiss' kappa of the choices and mean pairwise Dice of the masks, over images with
    two or more votes."""
    items = [
        collections.Counter(_category(v) for v in vs)
        for vs in votes_by_image.values()
        if len(vs) >= 2
    ]
    dices = []
    for vs in votes_by_image.values():
        masks = [read_mask(out_dir / v["mask_file"]) for v in vs if v.get("mask_file")]
        pairs = [dice(a, b) for a, b in itertools.combinations(masks, 2) if a.shape == b.shape]
        if pairs:
            dices.append(float(np.mean(pairs)))
    kappa = fleiss_kappa(items)
    return {
        "images_with_several_votes": len(items),
        "fleiss_kappa": None if np.isnan(kappa) else kappa,
        "pairwise_dice": float(np.mean(dices)) if dices else None,
    }


def build_report(out_dir: str | Path) -> dict[str, Any]:
    """The report of an annotation folder, by stage, then annotator (and `all`)."""
    out_dir = Path(out_dir)
    recs = load_records(out_dir)
    by_image: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for r in recs:
        by_image[str(r["key"])].append(r)
    stages: dict[str, Any] = {}
    for stage in sorted({str(r.get("stage") or "live") for r in recs}):
        keys = [k for k, rs in by_image.items() if str(rs[-1].get("stage") or "live") == stage]
        votes = {k: dec.current_votes(by_image[k]) for k in keys}
        seconds: dict[str, dict[str, float]] = collections.defaultdict(dict)
        for k in keys:
            for r in by_image[k]:
                if r.get("seconds") is not None:
                    who = seconds[str(r.get("annotator"))]
                    who[k] = who.get(k, 0.0) + float(r["seconds"])
        flat = [v for vs in votes.values() for v in vs]
        annotators = sorted({str(v.get("annotator")) for v in flat} | set(seconds))
        groups = {
            a: summarize([v for v in flat if str(v.get("annotator")) == a], seconds[a].values())
            for a in annotators
        }
        groups[ALL] = summarize(flat, [s for a in seconds.values() for s in a.values()])
        needed = {k: max(int(r.get("votes_needed") or 1) for r in by_image[k]) for k in keys}
        states = collections.Counter(dec.resolve(by_image[k], needed[k]).state for k in keys)
        stages[stage] = {
            "images": len(keys),
            "states": dict(sorted(states.items())),
            "adjudications": sum(1 for k in keys for r in by_image[k] if r.get("adjudicate")),
            "annotators": groups,
            "agreement": agreement(out_dir, votes),
        }
    return {"folder": str(out_dir), "decisions": len(recs), "paper": PAPER, "stages": stages}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown tables, one section per stage."""
    lines = [
        f"# Annotation report: {report['folder']}",
        "",
        f"{report['decisions']} decisions. Paper 1 for comparison: doctors preferred a machine "
        "mask over their own in 3 of 5 cases (Stage I) and rejected all candidates for under "
        "5% of the images (Stage II).",
    ]
    for stage, s in report["stages"].items():
        ag = s["agreement"]
        states = ", ".join(f"{n} {k}" for k, n in s["states"].items())
        lines += [
            "",
            f"## Stage {stage}",
            "",
            f"{s['images']} images ({states}); {s['adjudications']} adjudications. Agreement "
            f"over {ag['images_with_several_votes']} images with several votes: Fleiss' kappa "
            f"{_num(ag['fleiss_kappa'])}, pairwise Dice of the masks {_num(ag['pairwise_dice'])}.",
            "",
            "| annotator | votes | machine preferred over manual | rejected all (drew) | "
            "corrected | Dice candidate vs corrected | seconds per image (median, mean) |",
            "|---|---|---|---|---|---|---|",
        ]
        for who, g in s["annotators"].items():
            mm, t = g["machine_vs_manual"], g["seconds_per_image"]
            lines.append(
                f"| {who} | {g['votes']} | {_pct(g['machine_preferred'])} ({mm['machine']} of "
                f"{mm['machine'] + mm['manual']}) | {_pct(g['rejected_all'])} | "
                f"{_pct(g['corrected'])} | {_num(g['dice_candidate_vs_corrected'])} | "
                f"{_num(t['median'], '.1f')}, {_num(t['mean'], '.1f')} |"
            )
    return "\n".join(lines) + "\n"


def plot(report: Mapping[str, Any], path: Path) -> Path:
    """Per stage and annotator: machine-preferred and rejected-all rates beside paper 1's
    figures, and the median seconds per image."""
    import matplotlib

    matplotlib.use("Agg")  # headless; must precede pyplot
    import matplotlib.pyplot as plt

    stages = list(report["stages"].items())
    fig, axes = plt.subplots(len(stages) or 1, 2, figsize=(10, 3.2 * max(1, len(stages))))
    axes = np.atleast_2d(axes)
    for row, (stage, s) in zip(axes, stages, strict=False):
        names = list(s["annotators"])
        x = np.arange(len(names))
        for off, key, colour in ((-0.2, "machine_preferred", "C0"), (0.2, "rejected_all", "C3")):
            vals = [s["annotators"][n][key] or 0.0 for n in names]
            row[0].bar(x + off, vals, 0.4, color=colour, label=key.replace("_", " "))
            row[0].axhline(PAPER[key], color=colour, ls="--", lw=1)
        row[0].set(xticks=x, ylim=(0, 1), title=f"Stage {stage}: rates (dashed: paper 1)")
        row[0].set_xticklabels(names, rotation=30, ha="right")
        row[0].legend(fontsize=8)
        medians = [s["annotators"][n]["seconds_per_image"]["median"] or 0.0 for n in names]
        row[1].bar(x, medians, 0.6, color="C2")
        row[1].set(xticks=x, title=f"Stage {stage}: median seconds per image")
        row[1].set_xticklabels(names, rotation=30, ha="right")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(out_dir: str | Path, report_dir: str | Path | None = None) -> dict[str, Any]:
    """Writes `annotation_report.{md,json,png}` (default into `out_dir/report/`)."""
    report = build_report(out_dir)
    dest = Path(report_dir) if report_dir is not None else Path(out_dir) / "report"
    write_json(dest / "annotation_report.json", report)
    write_text(dest / "annotation_report.md", markdown(report))
    plot(report, dest / "annotation_report.png")
    return report
