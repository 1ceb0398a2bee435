"""The papers' result tables as data: which configurations, folds, split and metrics each
holds, how the paper aggregates them, and the values it prints.

A table's runs are ordinary run directories under one workdir:

    WORKDIR/<configuration>/fold_<k>/   a CV configuration's folds (as scripts/cross_validate.py)
    WORKDIR/<configuration>/            a run on the dataset's own splits (fold None)
    WORKDIR/tables/<table>/             manifest, job scripts, table.{md,json,tex}

A configuration is named by its config file's path under `configs/` without `.py`, so
tables that share a configuration (paper 1's Tables 2, 3 and 4; 6 and 7; paper 2's
infection and detection tables) share its runs when they share a workdir.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from qatacov_jax.evaluation.reports import METRIC_LABELS
from qatacov_jax.reproduce import paper_values as pv

AGGREGATES = ("mean", "pooled")  # fold average | every held-out sample of every fold
KINDS = ("metrics", "confusion")


@dataclasses.dataclass(frozen=True)
class Configuration:
    """One row of a table: a config file (+ overrides) trained once per fold."""

    name: str  # the run directory under the workdir, e.g. "unet_densenet121_frozen"
    config_file: str  # relative to the repository root
    model: str  # the row's labels, as the paper prints them
    encoder: str
    frozen: bool | None = None  # None: the table has no frozen / not frozen column
    overrides: tuple[str, ...] = ()  # `--config.<field>=<value>` applied after the file
    # The model the config builds (`config.model.arch` / `.encoder`): a run that trained
    # another one (an override) is flagged in the gathered table instead of passing for it.
    arch: str = ""
    encoder_name: str = ""


@dataclasses.dataclass(frozen=True)
class Column:
    """One reported metric: a `MetricAccumulator.summary()` metric of one level."""

    level: str  # "pixel" | "detection"
    metric: str  # e.g. "f1", "iou_per_image"
    label: str
    aggregate: str  # one of AGGREGATES: how the paper combines the folds

    @property
    def key(self) -> str:
        """`pixel_f1`: the key of the runs' flat results and of the paper's values."""
        return f"{self.level}_{self.metric}"


@dataclasses.dataclass(frozen=True)
class Task:
    """One training of a table: a configuration on one fold (None: the dataset's splits)."""

    index: int  # position in `Table.tasks()`: the job-array index
    configuration: Configuration
    fold: int | None

    @property
    def run_dir(self) -> str:
        """The run directory, relative to the workdir."""
        if self.fold is None:
            return self.configuration.name
        return f"{self.configuration.name}/fold_{self.fold}"


@dataclasses.dataclass(frozen=True)
class Table:
    """A table of a paper: its rows, folds, metrics and printed values."""

    name: str  # --table NAME
    title: str
    source: str  # the citation, e.g. "Degerli et al. (paper 1), Table 2"
    kind: str  # "metrics": configurations x columns; "confusion": one 2x2 per configuration
    configurations: tuple[Configuration, ...]
    folds: tuple[int | None, ...]  # (0, ..., 4) for 5-fold CV; (None,) for fixed splits
    split: str  # the results' evaluation split: "eval" (held-out fold) or "test"
    columns: tuple[Column, ...] = ()
    paper: Mapping[str, Mapping[str, float]] = dataclasses.field(default_factory=dict)
    paper_ci: Mapping[str, Mapping[str, float]] = dataclasses.field(default_factory=dict)
    paper_confusion: Mapping[str, Mapping[str, int]] = dataclasses.field(default_factory=dict)
    overrides: tuple[str, ...] = ()  # `--config.<field>=<value>` for every configuration
    notes: tuple[str, ...] = ()  # what the reader needs to compare the figures

    def tasks(self) -> tuple[Task, ...]:
        """Every (configuration, fold), configuration-major: index = row * len(folds) + k."""
        pairs = [(c, f) for c in self.configurations for f in self.folds]
        return tuple(Task(i, c, f) for i, (c, f) in enumerate(pairs))

    def configuration(self, name: str) -> Configuration:
        for c in self.configurations:
            if c.name == name:
                return c
        raise KeyError(f"Table {self.name} has no configuration {name!r}.")


# ----------------------------------------------------------------------------- paper 1

P1_ARCHS = {"unet": "U-Net", "unetpp": "UNet++", "dla": "DLA"}
P1_ENCODERS = {
    "chexnet": "CheXNet",
    "densenet121": "DenseNet-121",
    "incv3": "Inception-v3",
    "resnet50": "ResNet-50",
}
# Config-file encoder names -> model registry names (as configs/default.py ENCODER_NAMES).
P1_ENCODER_NAMES = {
    "chexnet": "chexnet",
    "densenet121": "densenet121",
    "incv3": "inceptionv3",
    "resnet50": "resnet50",
}
P1_FOLDS = (0, 1, 2, 3, 4)
# The evaluation report's headings, except that paper 2's tables head its per-image figures
# plain "IoU" / "DSC" (the only IoU/DSC they report).
_LABELS = {**METRIC_LABELS, "iou_per_image": "IoU", "dsc_per_image": "DSC"}


def _columns(level: str, metrics: tuple[str, ...], aggregate: str) -> tuple[Column, ...]:
    return tuple(Column(level, m, _LABELS[m], aggregate) for m in metrics)


def _p1(arch: str, encoder: str, frozen: bool) -> Configuration:
    name = pv.paper1_name(arch, encoder, frozen)
    return Configuration(
        name,
        f"configs/{name}.py",
        P1_ARCHS[arch],
        P1_ENCODERS[encoder],
        frozen,
        arch=arch,
        encoder_name=P1_ENCODER_NAMES[encoder],
    )


# The paper's row order: decoder, then encoder, frozen (✓) before not frozen (×).
P1_GRID = tuple(_p1(a, e, f) for a in P1_ARCHS for e in P1_ENCODERS for f in (True, False))
_GROUP2 = Configuration(
    "group2_unet_densenet121",
    "configs/group2_unet_densenet121.py",
    "U-Net",
    "DenseNet-121",
    frozen=False,
    arch="unet",
    encoder_name="densenet121",
)
_CIS = (
    "95% CI r = 1.96 sqrt(m(1-m)/N) (eq. 13): N = positives for sensitivity, negatives for "
    "specificity, all samples otherwise."
)

TABLE2 = Table(
    name="p1-table2",
    title="COVID-19 infected region segmentation, Group-I (pixel level, %)",
    source="Degerli et al. (paper 1), Table 2",
    kind="metrics",
    configurations=P1_GRID,
    folds=P1_FOLDS,
    split="eval",
    columns=_columns("pixel", pv.PIXEL_METRICS_P1, "mean"),
    paper=pv.TABLE2,
    notes=(
        "Fold averages of the 5 held-out folds (the paper: 'average performance metrics ... "
        "from 5-folds'); the CI applies eq. 13 to the average with N = the pooled pixels.",
        "As printed, the paper's DLA CheXNet × row repeats its DLA DenseNet-121 × row.",
    ),
)
TABLE3 = Table(
    name="p1-table3",
    title="COVID-19 detection, Group-I (%, ± 95% CI as a fraction)",
    source="Degerli et al. (paper 1), Table 3",
    kind="metrics",
    configurations=P1_GRID,
    folds=P1_FOLDS,
    split="eval",
    columns=_columns("detection", pv.DETECTION_METRICS_P1, "pooled"),
    paper=pv.TABLE3,
    paper_ci=pv.TABLE3_CI,
    notes=(
        "Pooled over the 5 held-out folds (15,495 CXRs in the paper): the paper calls these "
        "averages, but its U-Net and UNet++ DenseNet-121 rows are exactly the metrics of "
        "Table 4's cumulative confusion matrices (docs/method.md, Confidence intervals).",
        _CIS,
    ),
)
TABLE4 = Table(
    name="p1-table4",
    title="Cumulative confusion matrices of COVID-19 detection, Group-I",
    source="Degerli et al. (paper 1), Table 4",
    kind="confusion",
    configurations=(_p1("unet", "densenet121", False), _p1("unetpp", "densenet121", False)),
    folds=P1_FOLDS,
    split="eval",
    paper_confusion=pv.TABLE4,
    notes=("Summed over the 5 held-out folds: every CXR is counted once.",),
)
TABLE6 = Table(
    name="p1-table6",
    title="Infected region segmentation and detection on the Group-II test set (%)",
    source="Degerli et al. (paper 1), Table 6",
    kind="metrics",
    configurations=(_GROUP2,),
    folds=(None,),
    split="test",
    columns=_columns("pixel", pv.DETECTION_METRICS_P1, "pooled")
    + _columns("detection", pv.DETECTION_METRICS_P1, "pooled"),
    paper=pv.TABLE6,
    notes=("One run on ChestX-ray14's predefined split: no cross-validation.", _CIS),
)
TABLE7 = Table(
    name="p1-table7",
    title="Confusion matrix of COVID-19 detection on the Group-II test set",
    source="Degerli et al. (paper 1), Table 7",
    kind="confusion",
    configurations=(_GROUP2,),
    folds=(None,),
    split="test",
    paper_confusion=pv.TABLE7,
)

# ----------------------------------------------------------------------------- paper 2

P2_ARCHS = {"unet": "U-Net", "unetpp": "U-Net++", "fpn": "FPN"}
P2_ENCODERS = {
    "resnet18": "ResNet18",
    "resnet50": "ResNet50",
    "densenet121": "DenseNet121",
    "densenet161": "DenseNet161",
    "inceptionv4": "InceptionV4",
}


def _p2_grid(task: str) -> tuple[Configuration, ...]:
    out = []
    for arch, model in P2_ARCHS.items():
        for encoder, label in P2_ENCODERS.items():
            name = f"paper2/{task}_{arch}_{encoder}"
            out.append(
                Configuration(
                    name, f"configs/{name}.py", model, label, arch=arch, encoder_name=encoder
                )
            )
    return tuple(out)


_P2_TEXT_ONLY = (
    "Our copy of paper 2 lost its tables: the paper column holds only the values its text "
    "quotes (docs/reproduce.md); '—' where it quotes none."
)
_P2_SEGMENTATION_NOTES = (
    "Every fold's model is tested on the shipped Test set (paper 2's protocol, "
    "docs/method.md#protocols), pooled over the 5 folds: IoU and DSC are means over the "
    "test images (paper 2's per-image metrics, docs/method.md#iou-and-dsc), CI with N = test "
    "images; accuracy over every pixel.",
    _P2_TEXT_ONLY,
)
_P2_SEGMENTATION = (Column("pixel", "accuracy", "Accuracy", "pooled"),) + _columns(
    "pixel", ("iou_per_image", "dsc_per_image"), "pooled"
)
P2_LUNG = Table(
    name="p2-lung",
    title="Lung segmentation on COVID-QU-Ex (%)",
    source="Tahir et al. (paper 2), Table 2 (lung segmentation)",
    kind="metrics",
    configurations=_p2_grid("lung"),
    folds=P1_FOLDS,
    split="eval",
    columns=_P2_SEGMENTATION,
    paper=pv.P2_LUNG,
    notes=_P2_SEGMENTATION_NOTES,
)
P2_INFECTION = Table(
    name="p2-infection",
    title="COVID-19 infection segmentation on COVID-QU-Ex (%)",
    source="Tahir et al. (paper 2), Table 2 (infection segmentation)",
    kind="metrics",
    configurations=_p2_grid("infection"),
    folds=P1_FOLDS,
    split="eval",
    columns=_P2_SEGMENTATION,
    paper=pv.P2_INFECTION,
    notes=_P2_SEGMENTATION_NOTES,
)
P2_DETECTION = Table(
    name="p2-detection",
    title="COVID-19 detection by the infection segmentation models on COVID-QU-Ex (%)",
    source="Tahir et al. (paper 2), Table 3",
    kind="metrics",
    configurations=_p2_grid("infection"),
    folds=P1_FOLDS,
    split="eval",
    columns=_columns(
        "detection", ("accuracy", "precision", "sensitivity", "f1", "specificity"), "pooled"
    ),
    paper=pv.P2_DETECTION,
    notes=(
        "Every fold's model is tested on the shipped Test set (paper 2's protocol), pooled "
        "over the 5 folds with N = the test images. " + _CIS,
        _P2_TEXT_ONLY,
    ),
)

# ----------------------------------------------------------------------------- quickstart

_QUICKSTART_MODEL = dict(
    config_file="configs/quickstart.py",
    model="U-Net",
    encoder="DenseNet-121",
    arch="unet",
    encoder_name="densenet121",
)
QUICKSTART = Table(
    name="quickstart",
    title="U-Net DenseNet-121 on the synthetic set, 2-fold CV: the machinery of Tables 2-4",
    source="Quickstart (no paper)",
    kind="metrics",
    configurations=(
        Configuration("quickstart/unet_densenet121", frozen=False, **_QUICKSTART_MODEL),
        Configuration(
            "quickstart/unet_densenet121_frozen",
            frozen=True,
            overrides=("--config.model.frozen=True",),
            **_QUICKSTART_MODEL,
        ),
    ),
    folds=(0, 1),
    split="eval",
    columns=_columns("pixel", ("sensitivity", "f1"), "mean")
    + _columns("detection", ("sensitivity", "specificity"), "pooled"),
    # 32x32 images, 4 steps of 8 in one epoch: minutes on a CPU, nothing learned.
    overrides=(
        "--config.data.num_folds=2",
        "--config.data.image_size=32",
        "--config.data.synthetic.image_size=32",
        "--config.data.synthetic.num_train=96",
        "--config.data.synthetic.num_test=16",
        "--config.num_epochs=1",
        "--config.steps_per_epoch=4",
        "--config.batch_size=8",
        "--config.bn_recalibration_batches=2",
        "--config.log_every_steps=2",
    ),
    notes=(
        "A smoke test: random initialisation and 4 training steps, so the figures only show "
        "that the runs, the launchers and the gathering work.",
    ),
)

TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        TABLE2,
        TABLE3,
        TABLE4,
        TABLE6,
        TABLE7,
        P2_LUNG,
        P2_INFECTION,
        P2_DETECTION,
        QUICKSTART,
    )
}


def get_table(name: str) -> Table:
    """The table called `name`; an unknown name raises a ValueError listing the tables."""
    if name not in TABLES:
        raise ValueError(f"Unknown table {name!r}; choose one of {sorted(TABLES)}.")
    return TABLES[name]
