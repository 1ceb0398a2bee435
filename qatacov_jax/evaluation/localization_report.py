"""Reports of the localisation comparison: example figures like the paper's and Markdown tables.

`ExampleCollector` keeps, while the split streams past, the first N images and for each method
the K COVID-19 images where the method puts the least mass inside the infected region: O(N +
K * methods) images, whatever the split's size. `write_figures` draws them one row per image:
X-ray | ground truth | Grad-CAM | Grad-CAM++ | infection map, every map painted with
`inference.infection_map` (jet hue/saturation on the X-ray's brightness, as the paper).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import matplotlib

matplotlib.use("Agg")  # headless; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from qatacov_jax.inference.infection_map import infection_map  # noqa: E402

LABELS = {"infection_map": "Infection map", "gradcam": "Grad-CAM", "gradcampp": "Grad-CAM++"}
# Figure columns after X-ray and ground truth: the paper's order, the infection map last.
COLUMN_ORDER = ("gradcam", "gradcampp", "infection_map")


@dataclasses.dataclass
class Example:
    """One image with its ground truth, maps and per-method energy inside the mask."""

    index: int  # position in the split (`data.example_filenames`)
    name: str
    label: int
    xray: np.ndarray  # (H, W) float in [0, 1]
    mask: np.ndarray  # (H, W) bool
    maps: dict[str, np.ndarray]  # method -> (H, W) float in [0, 1]
    energy: dict[str, float]  # method -> share of the map's mass inside the mask


class ExampleCollector:
    """The first `num_first` images and the `num_worst` lowest-energy COVID-19 images per
    method, kept while batches stream past (host memory O(num_first + num_worst * methods))."""

    def __init__(self, methods: Sequence[str], num_first: int, num_worst: int) -> None:
        self.methods = tuple(methods)
        self.num_first, self.num_worst = num_first, num_worst
        self.first: list[Example] = []
        self.worst: dict[str, list[Example]] = {m: [] for m in self.methods}

    def add(
        self,
        batch: Mapping[str, jax.Array],
        maps: Mapping[str, jax.Array],
        stats: Mapping[str, Any],
        names: Sequence[str],
    ) -> None:
        """Considers one batch. `stats` is its `localization_statistics` on the host; images
        and maps are fetched from the devices only when a row of this batch is kept."""
        valid = np.asarray(jax.device_get(batch["valid"]))
        local = np.asarray(stats["localisable"])
        energy = {m: np.asarray(stats["methods"][m]["energy"]) for m in self.methods}
        rows = np.nonzero(valid)[0]
        take_first = list(rows[: max(0, self.num_first - len(self.first))])
        worst_rows: dict[str, list[int]] = {}
        for m in self.methods:
            kept = [e.energy[m] for e in self.worst[m]]
            cand = [i for i in rows if local[i]]
            # Rows that would enter the K lowest energies (ties keep the earlier image).
            ranked = sorted([(v, -1) for v in kept] + [(float(energy[m][i]), i) for i in cand])
            worst_rows[m] = [i for _, i in ranked[: self.num_worst] if i >= 0]
        wanted = sorted(set(take_first).union(*worst_rows.values()))
        if not wanted:
            return
        host = jax.device_get({k: batch[k] for k in ("image", "mask", "label", "index")})
        host_maps = jax.device_get(dict(maps))
        made = {}
        for i in wanted:
            idx = int(host["index"][i])
            made[i] = Example(
                index=idx,
                name=Path(str(names[idx])).stem if idx < len(names) else f"example_{idx}",
                label=int(host["label"][i]),
                xray=np.asarray(host["image"][i, ..., 0], np.float32),
                mask=np.asarray(host["mask"][i, ..., 0]) > 0.5,
                maps={m: np.asarray(host_maps[m][i], np.float32) for m in self.methods},
                energy={m: float(energy[m][i]) for m in self.methods},
            )
        self.first.extend(made[i] for i in take_first)
        for m in self.methods:
            merged = self.worst[m] + [made[i] for i in worst_rows[m]]
            merged.sort(key=lambda e: (e.energy[m], e.index))
            self.worst[m] = merged[: self.num_worst]


def example_panels(example: Example, methods: Sequence[str]) -> list[np.ndarray]:
    """(H, W, 3) uint8 panels: the X-ray, the ground truth painted as a map with probability
    1 inside the mask, then each method's map painted the same way."""
    panels = [infection_map(example.xray, np.zeros_like(example.xray))]
    panels.append(infection_map(example.xray, example.mask, floor=0.5))
    panels += [infection_map(example.xray, example.maps[m]) for m in methods]
    return panels


def plot_examples(examples: Sequence[Example], path: Path, title: str) -> Path:
    """One row per example: X-ray | ground truth | Grad-CAM | Grad-CAM++ | infection map."""
    methods = [m for m in COLUMN_ORDER if m in examples[0].maps]
    cols = ["X-ray", "Ground truth", *(LABELS.get(m, m) for m in methods)]
    fig, axes = plt.subplots(
        len(examples), len(cols), figsize=(1.9 * len(cols), 2.0 * len(examples) + 0.5)
    )
    axes = np.atleast_2d(axes)
    for r, ex in enumerate(examples):
        for c, panel in enumerate(example_panels(ex, methods)):
            ax = axes[r, c]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=9)
            if c >= 2 and ex.mask.any():
                ax.set_xlabel(f"in mask {100 * ex.energy[methods[c - 2]]:.0f}%", fontsize=7)
        kind = "COVID-19" if ex.label == 1 else "control"
        axes[r, 0].set_ylabel(f"{ex.name}\n{kind}", fontsize=7)
    fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_figures(collector: ExampleCollector, out_dir: Path) -> list[Path]:
    """`first.png` and `worst_<method>.png` (skipped when there is nothing to draw)."""
    written = []
    if collector.first:
        written.append(plot_examples(collector.first, out_dir / "first.png", "First test images"))
    for m, examples in collector.worst.items():
        if examples:
            title = f"Least map mass inside the mask: {LABELS.get(m, m)}"
            written.append(plot_examples(examples, out_dir / f"worst_{m}.png", title))
    return written


def _cell(m: Mapping[str, Any]) -> str:
    v, r = m.get("value"), m.get("ci95")
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{100 * v:.2f} ± {r:.4f}" if r is not None and math.isfinite(r) else f"{100 * v:.2f}"


def markdown_report(summary: Mapping[str, Any]) -> str:
    """`localization.md`: localisation per method (COVID-19 images, then all images) and
    image-level detection, values in % with the paper's 95% CI radius as a fraction."""
    methods = summary["methods"]
    seg, cls = summary["segmenter"], summary["classifier"]
    lines = [
        f"# Infection maps vs activation maps ({summary['split']} split)",
        "",
        f"Segmenter: {seg['arch']} {seg['encoder']} (`{seg['run_dir']}`). Classifier: "
        f"{cls['encoder']} + GAP + 2-class softmax (`{cls['run_dir']}`). "
        f"{summary['num_images']} images, {summary['num_covid19_localised']} of them COVID-19 "
        "with infected pixels. Values in %, ± the 95% CI radius r = 1.96 sqrt(m(1-m)/N) "
        "(N: pixels for F1/IoU, COVID-19 images for pointing game and energy).",
        "",
    ]
    head = (
        "| method | F1 @0.5 | IoU @0.5 | best threshold | F1 @best | IoU @best "
        "| pointing game | energy in mask |"
    )
    for subset, title in (("covid19", "COVID-19 images"), ("all", "all images")):
        lines += [f"## Localisation, {title}", "", head, "|---" * 8 + "|"]
        for name, m in methods.items():
            px = m["pixel"][subset]
            at, best = px["at_threshold"]["metrics"], px["best"]["metrics"]
            point = _cell(m["pointing_game"]) if subset == "covid19" else "-"
            energy = _cell(m["energy_inside_mask"]) if subset == "covid19" else "-"
            lines.append(
                f"| {LABELS.get(name, name)} | {_cell(at['f1'])} | {_cell(at['iou'])} "
                f"| {px['best']['threshold']:.3f} | {_cell(best['f1'])} | {_cell(best['iou'])} "
                f"| {point} | {energy} |"
            )
        lines.append("")
    lines += [
        "## COVID-19 detection",
        "",
        "| detector | rule | sensitivity | specificity | precision | F1 | accuracy |",
        "|---" * 7 + "|",
    ]
    for name, d in summary["detection"].items():
        label = "Classifier" if name == "classifier" else LABELS.get(name, name)
        m = d["metrics"]
        cells = " | ".join(
            _cell(m[k]) for k in ("sensitivity", "specificity", "precision", "f1", "accuracy")
        )
        lines.append(f"| {label} | {d['rule']} | {cells} |")
    if summary.get("figures"):
        lines += ["", "## Figures", ""]
        lines += [f"![{Path(p).stem}]({p})" for p in summary["figures"]]
    return "\n".join(lines) + "\n"
