"""table.json (`reproduce.gather`) -> Markdown and LaTeX, laid out as the paper's table.

A cell reads `ours ± CI [paper; ours - paper]`: our figure in % (the paper's aggregate of
the folds), its 95% CI as a fraction (as paper 1's Table 3 prints it), the paper's printed
value and the difference in percentage points. Nothing run-specific (paths, times) is
printed, so the same runs always give the same text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

DASH = "—"
LEVEL_TITLES = {
    "pixel": "Segmentation (pixel level)",
    "detection": "Detection (image level)",
}
LEGEND = (
    "Cell: ours ± 95% CI (as a fraction) [paper as printed; ours − paper, in points]. "
    "Ours in %, from the finished folds only."
)


def pct(x: float | None) -> str:
    return DASH if x is None else f"{100 * x:.2f}"


def signed(x: float) -> str:
    return f"{x:+.2f}".replace("-", "−")


def count(n: int) -> str:
    """12059345 -> '12.06M', 85632 -> '85.63K' (Table 8's style)."""
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    return f"{n / 1e3:.2f}K" if n >= 1_000 else str(n)


def cell_text(cell: Mapping[str, Any]) -> str:
    ours = pct(cell.get("ours"))
    if cell.get("ours") is not None and cell.get("ci95") is not None:
        ours += f" ± {cell['ci95']:.4f}"
    paper = cell.get("paper_pct")
    if paper is None:
        return ours
    if cell.get("diff_pp") is None:
        return f"{ours} [{paper:.2f}]"
    return f"{ours} [{paper:.2f}; {signed(cell['diff_pp'])}]"


def params_text(params: Mapping[str, Any] | None) -> str:
    if not params:
        return "?"
    return f"{count(params['trainable'])} / {count(params['non_trainable'])}"


def folds_text(row: Mapping[str, Any]) -> str:
    return f"{len(row['folds']['finished'])}/{len(row['folds']['expected'])}"


def frozen_text(frozen: bool | None) -> str:
    return {True: "✓", False: "×", None: ""}[frozen]


def _labels(columns: Sequence[Mapping[str, Any]]) -> list[str]:
    """Column labels, prefixed by their level where a table mixes levels."""
    mixed = len({c["level"] for c in columns}) > 1
    return [f"{c['level'].capitalize()} {c['label']}" if mixed else c["label"] for c in columns]


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def model_text(row: Mapping[str, Any]) -> str:
    """The row's model, flagged when its runs trained another one (a config override)."""
    ran = row.get("ran_instead")
    return row["model"] if not ran else f"{row['model']} (ran {ran})"


def _row_head(row: Mapping[str, Any], with_frozen: bool) -> list[str]:
    head = [model_text(row), row["encoder"]]
    if with_frozen:
        head.append(frozen_text(row["frozen"]))
    return [*head, params_text(row["params"]), folds_text(row)]


def _md_metrics(result: Mapping[str, Any]) -> list[str]:
    columns, rows = result["columns"], result["rows"]
    with_frozen = any(r["frozen"] is not None for r in rows)
    head = ["Model", "Encoder", *(["Frozen"] if with_frozen else [])]
    head += ["Parameters (trainable / non-trainable)", "Folds", *_labels(columns)]
    lines = [_md_row(head), "|---" * len(head) + "|"]
    for r in rows:
        cells = [cell_text(r["cells"][c["key"]]) for c in columns]
        lines.append(_md_row(_row_head(r, with_frozen) + cells))
    return lines


def _md_transposed(result: Mapping[str, Any]) -> list[str]:
    """One configuration, several levels (paper 1's Table 6): metrics as rows."""
    (r,) = result["rows"]
    levels = list(dict.fromkeys(c["level"] for c in result["columns"]))
    labels = list(dict.fromkeys(c["label"] for c in result["columns"]))
    by = {(c["level"], c["label"]): c["key"] for c in result["columns"]}
    lines = [
        f"{model_text(r)} {r['encoder']} {frozen_text(r['frozen'])}: parameters "
        f"{params_text(r['params'])}; runs {folds_text(r)}.",
        "",
        _md_row(["Metric", *(LEVEL_TITLES[lv] for lv in levels)]),
        "|---" * (1 + len(levels)) + "|",
    ]
    for label in labels:
        cells = [cell_text(r["cells"][by[lv, label]]) if (lv, label) in by else "" for lv in levels]
        lines.append(_md_row([label, *cells]))
    return lines


def _confusion_cells(conf: Mapping[str, Any] | None) -> tuple[list[str], list[str]]:
    if not conf:
        return [DASH, DASH], [DASH, DASH]
    return [f"{conf['tn']:,}", f"{conf['fp']:,}"], [f"{conf['fn']:,}", f"{conf['tp']:,}"]


def _md_confusion(result: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    for r in result["rows"]:
        ours_neg, ours_pos = _confusion_cells(r["confusion"]["ours"])
        paper_neg, paper_pos = _confusion_cells(r["confusion"]["paper"])
        lines += [
            f"## {model_text(r)} {r['encoder']} {frozen_text(r['frozen'])}".rstrip(),
            "",
            f"Runs {folds_text(r)}; parameters {params_text(r['params'])}.",
            "",
            "| Ground truth \\ Predicted | Control | COVID-19 "
            "| Control (paper) | COVID-19 (paper) |",
            "|---|---:|---:|---:|---:|",
            _md_row(["Control", *ours_neg, *paper_neg]),
            _md_row(["COVID-19", *ours_pos, *paper_pos]),
            "",
        ]
    return lines


def _md_missing(result: Mapping[str, Any]) -> list[str]:
    missing = result["missing"]
    if not missing:
        return []
    lines = [
        f"## Missing runs ({len(missing)})",
        "",
        "| Configuration | Fold | Task | Run directory | Status |",
        "|---|---|---|---|---|",
    ]
    for m in missing:
        fold = DASH if m["fold"] is None else str(m["fold"])
        cells = [m["configuration"], fold, str(m["task_index"]), m["run_dir"], m["status"]]
        lines.append(_md_row(cells))
    return lines


def markdown(result: Mapping[str, Any]) -> str:
    """The table as Markdown: title, legend, notes, the table, missing runs."""
    runs = result["runs"]
    lines = [f"# {result['source']}: {result['title']}", ""]
    if result["kind"] == "metrics":
        lines += [LEGEND, ""]
    lines += [f"- {note}" for note in result["notes"]]
    lines += [
        f"- Runs: {runs['finished']} of {runs['expected']} finished"
        + ("; the missing ones are listed below." if result["missing"] else "."),
        "",
    ]
    if result["kind"] == "confusion":
        lines += _md_confusion(result)
    elif len(result["rows"]) == 1 and len({c["level"] for c in result["columns"]}) > 1:
        lines += [*_md_transposed(result), ""]
    else:
        lines += [*_md_metrics(result), ""]
    lines += _md_missing(result)
    return "\n".join(lines).rstrip() + "\n"


_TEX_ESCAPES = {
    "&": r"\&",
    "%": r"\%",
    "_": r"\_",
    "#": r"\#",
    "✓": r"\checkmark",
    "×": r"$\times$",
}


def tex(text: str) -> str:
    out = text
    for plain, escaped in _TEX_ESCAPES.items():
        out = out.replace(plain, escaped)
    return out.replace(" ± ", r" $\pm$ ").replace("−", "$-$").replace(DASH, "--")


def latex(result: Mapping[str, Any]) -> str:
    """The table as a LaTeX `table` (booktabs; `\\checkmark` needs amssymb). A confusion
    table has one row per configuration: ours TN FP FN TP, then the paper's."""
    if result["kind"] == "confusion":
        head = [
            "Model",
            "Encoder",
            "TN",
            "FP",
            "FN",
            "TP",
            "TN (paper)",
            "FP (paper)",
            "FN (paper)",
            "TP (paper)",
        ]
        body = []
        for r in result["rows"]:
            cells = [model_text(r), r["encoder"]]
            for conf in (r["confusion"]["ours"], r["confusion"]["paper"]):
                cells += [f"{conf[k]:,}" for k in ("tn", "fp", "fn", "tp")] if conf else [DASH] * 4
            body.append(cells)
    else:
        columns, rows = result["columns"], result["rows"]
        with_frozen = any(r["frozen"] is not None for r in rows)
        head = ["Model", "Encoder", *(["Frozen"] if with_frozen else [])]
        head += ["Parameters", "Folds", *_labels(columns)]
        body = [
            _row_head(r, with_frozen) + [cell_text(r["cells"][c["key"]]) for c in columns]
            for r in rows
        ]
    lines = [
        f"% {result['source']}: {result['title']}",
        "% Written by scripts/reproduce.py --gather. " + LEGEND,
        *(f"% Missing run: {m['run_dir']} ({m['status']})" for m in result["missing"]),
        r"\begin{table}",
        r"\centering",
        r"\caption{" + tex(f"{result['title']} ({result['source']})") + "}",
        r"\begin{tabular}{" + "l" * len(head) + "}",
        r"\toprule",
        " & ".join(tex(h) for h in head) + r" \\",
        r"\midrule",
        *(" & ".join(tex(c) for c in cells) + r" \\" for cells in body),
        r"\bottomrule",
        r"\end{tabular}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"
