"""The papers' printed results, as data (percentages as printed; CIs as printed fractions).

Paper 1 (Degerli et al., QaTa-COV19): Tables 2, 3 (Group-I, 5-fold CV), 4 (cumulative
confusion matrices), 6 and 7 (Group-II test set), transcribed from the paper's text and
checked against docs/reproduce.md by tests/test_reproduce.py. Paper 2 (Tahir et al.,
COVID-QU-Ex): our copy of its text lost the tables themselves; only the values its prose
quotes are kept (docs/reproduce.md lists them and says where each comes from).

Row keys are configuration names: the config file's path under `configs/` without `.py`
(`unet_densenet121_frozen`, `paper2/lung_fpn_densenet121`); column keys are
`<level>_<metric>` as in the runs' results.
"""

from __future__ import annotations

_T = True
_F = False

# Paper 1, Table 2 (pixel level, %): sensitivity, specificity, precision, F1, F2, accuracy,
# AUC. As printed: the DLA CheXNet x row repeats the DLA DenseNet-121 x row digit for digit.
# fmt: off
_TABLE2 = (
    ("unet", "chexnet", _T, 81.20, 99.55, 83.78, 82.47, 81.70, 99.03, 99.19),
    ("unet", "chexnet", _F, 82.23, 99.56, 84.54, 83.34, 82.66, 99.08, 99.18),
    ("unet", "densenet121", _T, 82.29, 99.61, 86.02, 84.11, 83.01, 99.13, 99.35),
    ("unet", "densenet121", _F, 84.00, 99.66, 87.77, 85.81, 84.71, 99.22, 99.19),
    ("unet", "incv3", _T, 80.42, 99.59, 84.94, 82.62, 81.28, 99.05, 99.20),
    ("unet", "incv3", _F, 82.34, 99.70, 88.87, 85.43, 83.54, 99.21, 98.82),
    ("unet", "resnet50", _T, 81.43, 99.62, 86.07, 83.67, 82.31, 99.11, 99.30),
    ("unet", "resnet50", _F, 79.90, 99.70, 88.64, 83.89, 81.43, 99.15, 98.98),
    ("unetpp", "chexnet", _T, 80.29, 99.59, 85.19, 82.64, 81.21, 99.05, 99.01),
    ("unetpp", "chexnet", _F, 81.45, 99.60, 85.60, 83.47, 82.24, 99.09, 99.01),
    ("unetpp", "densenet121", _T, 82.38, 99.61, 85.99, 84.14, 83.08, 99.13, 99.19),
    ("unetpp", "densenet121", _F, 82.36, 99.68, 88.07, 85.08, 83.42, 99.19, 99.30),
    ("unetpp", "incv3", _T, 82.87, 99.57, 84.83, 83.81, 83.24, 99.10, 99.21),
    ("unetpp", "incv3", _F, 83.49, 99.66, 87.60, 85.45, 84.22, 99.20, 99.18),
    ("unetpp", "resnet50", _T, 82.07, 99.59, 85.41, 83.71, 82.72, 99.10, 99.15),
    ("unetpp", "resnet50", _F, 82.64, 99.62, 86.52, 84.45, 83.33, 99.14, 99.27),
    ("dla", "chexnet", _T, 79.99, 99.61, 85.57, 82.66, 81.04, 99.06, 99.12),
    ("dla", "chexnet", _F, 82.84, 99.56, 84.63, 83.71, 83.19, 99.09, 99.17),
    ("dla", "densenet121", _T, 82.48, 99.62, 86.40, 84.36, 83.21, 99.14, 99.16),
    ("dla", "densenet121", _F, 82.84, 99.56, 84.63, 83.71, 83.19, 99.09, 99.17),
    ("dla", "incv3", _T, 80.28, 99.63, 86.43, 83.19, 81.41, 99.09, 99.02),
    ("dla", "incv3", _F, 83.44, 99.68, 88.18, 85.73, 84.34, 99.22, 99.29),
    ("dla", "resnet50", _T, 81.26, 99.63, 86.48, 83.78, 82.25, 99.12, 99.08),
    ("dla", "resnet50", _F, 82.07, 99.65, 86.99, 84.45, 83.00, 99.15, 99.31),
)
# fmt: on

# Paper 1, Table 3 (detection, %, +- the 95% CI as a fraction): sensitivity, specificity,
# precision, F1, F2, accuracy.
# fmt: off
_TABLE3 = (
    ("unet", "chexnet", _T, (97.56, 0.0056), (91.10, 0.0050), (72.07, 0.0071), (82.90, 0.0059), (91.11, 0.0045), (92.33, 0.0042)),
    ("unet", "chexnet", _F, (97.97, 0.0051), (92.74, 0.0045), (76.04, 0.0067), (85.62, 0.0055), (92.62, 0.0041), (93.73, 0.0038)),
    ("unet", "densenet121", _T, (98.07, 0.0050), (94.66, 0.0039), (81.20, 0.0062), (88.84, 0.0050), (94.16, 0.0037), (95.31, 0.0033)),
    ("unet", "densenet121", _F, (98.37, 0.0046), (98.05, 0.0024), (92.25, 0.0042), (95.21, 0.0034), (97.08, 0.0027), (98.12, 0.0021)),
    ("unet", "incv3", _T, (97.93, 0.0051), (90.00, 0.0052), (69.74, 0.0072), (81.47, 0.0061), (90.61, 0.0046), (91.51, 0.0044)),
    ("unet", "incv3", _F, (97.22, 0.0059), (98.37, 0.0022), (93.33, 0.0039), (95.24, 0.0034), (96.42, 0.0029), (98.15, 0.0021)),
    ("unet", "resnet50", _T, (98.24, 0.0047), (93.88, 0.0042), (79.06, 0.0064), (87.61, 0.0052), (93.69, 0.0038), (94.71, 0.0035)),
    ("unet", "resnet50", _F, (96.37, 0.0067), (97.82, 0.0026), (91.21, 0.0045), (93.72, 0.0038), (95.30, 0.0033), (97.54, 0.0024)),
    ("unetpp", "chexnet", _T, (97.80, 0.0053), (91.70, 0.0048), (73.49, 0.0069), (83.92, 0.0058), (91.73, 0.0043), (92.86, 0.0041)),
    ("unetpp", "chexnet", _F, (97.49, 0.0056), (93.65, 0.0043), (78.33, 0.0065), (86.87, 0.0053), (92.94, 0.0040), (94.39, 0.0036)),
    ("unetpp", "densenet121", _T, (97.70, 0.0054), (94.81, 0.0039), (81.58, 0.0061), (88.91, 0.0049), (93.98, 0.0037), (95.36, 0.0033)),
    ("unetpp", "densenet121", _F, (96.51, 0.0066), (99.16, 0.0016), (96.44, 0.0029), (96.48, 0.0029), (96.50, 0.0029), (98.66, 0.0018)),
    ("unetpp", "incv3", _T, (98.31, 0.0047), (90.54, 0.0051), (70.96, 0.0071), (82.43, 0.0060), (91.27, 0.0044), (92.02, 0.0043)),
    ("unetpp", "incv3", _F, (96.92, 0.0061), (98.37, 0.0022), (93.34, 0.0039), (95.10, 0.0034), (96.18, 0.0030), (98.10, 0.0021)),
    ("unetpp", "resnet50", _T, (97.80, 0.0053), (93.39, 0.0043), (77.69, 0.0066), (86.59, 0.0054), (92.98, 0.0040), (94.23, 0.0037)),
    ("unetpp", "resnet50", _F, (96.78, 0.0064), (97.43, 0.0028), (89.87, 0.0048), (93.20, 0.0040), (95.31, 0.0033), (97.31, 0.0025)),
    ("dla", "chexnet", _T, (97.46, 0.0057), (92.47, 0.0046), (75.27, 0.0068), (84.94, 0.0056), (92.03, 0.0043), (93.42, 0.0039)),
    ("dla", "chexnet", _F, (97.32, 0.0058), (94.93, 0.0038), (81.87, 0.0061), (88.93, 0.0049), (93.78, 0.0038), (95.39, 0.0033)),
    ("dla", "densenet121", _T, (97.36, 0.0058), (95.66, 0.0036), (84.08, 0.0058), (90.23, 0.0047), (94.38, 0.0036), (95.99, 0.0031)),
    ("dla", "densenet121", _F, (97.09, 0.0061), (99.07, 0.0017), (96.08, 0.0031), (96.58, 0.0029), (96.88, 0.0027), (98.69, 0.0018)),
    ("dla", "incv3", _T, (96.92, 0.0062), (93.24, 0.0044), (77.13, 0.0066), (85.90, 0.0055), (92.19, 0.0042), (93.94, 0.0040)),
    ("dla", "incv3", _F, (96.71, 0.0064), (99.13, 0.0016), (96.32, 0.0030), (96.52, 0.0029), (96.63, 0.0028), (98.67, 0.0018)),
    ("dla", "resnet50", _T, (97.49, 0.0056), (95.30, 0.0037), (82.98, 0.0059), (89.65, 0.0048), (94.20, 0.0037), (95.71, 0.0032)),
    ("dla", "resnet50", _F, (96.17, 0.0069), (98.15, 0.0024), (92.44, 0.0042), (94.27, 0.0037), (95.40, 0.0033), (97.77, 0.0023)),
)
# fmt: on

PIXEL_METRICS_P1 = ("sensitivity", "specificity", "precision", "f1", "f2", "accuracy", "auc")
DETECTION_METRICS_P1 = ("sensitivity", "specificity", "precision", "f1", "f2", "accuracy")


def paper1_name(arch: str, encoder: str, frozen: bool) -> str:
    """The configs/ file stem (and run directory name) of a paper-1 configuration."""
    return f"{arch}_{encoder}{'_frozen' if frozen else ''}"


TABLE2: dict[str, dict[str, float]] = {
    paper1_name(a, e, f): {f"pixel_{m}": v for m, v in zip(PIXEL_METRICS_P1, vals, strict=True)}
    for a, e, f, *vals in _TABLE2
}
TABLE3: dict[str, dict[str, float]] = {
    paper1_name(a, e, f): {
        f"detection_{m}": v for m, (v, _) in zip(DETECTION_METRICS_P1, pairs, strict=True)
    }
    for a, e, f, *pairs in _TABLE3
}
TABLE3_CI: dict[str, dict[str, float]] = {
    paper1_name(a, e, f): {
        f"detection_{m}": ci for m, (_, ci) in zip(DETECTION_METRICS_P1, pairs, strict=True)
    }
    for a, e, f, *pairs in _TABLE3
}

# Paper 1, Table 4: cumulative (over the 5 test folds) detection confusion matrices.
TABLE4: dict[str, dict[str, int]] = {
    "unet_densenet121": {"tn": 12_300, "fp": 244, "fn": 48, "tp": 2_903},
    "unetpp_densenet121": {"tn": 12_439, "fp": 105, "fn": 103, "tp": 2_848},
}

# Paper 1, Table 6: U-Net DenseNet-121 on the Group-II test set (%).
TABLE6: dict[str, dict[str, float]] = {
    "group2_unet_densenet121": {
        **{
            f"pixel_{m}": v
            for m, v in zip(
                DETECTION_METRICS_P1, (81.72, 99.93, 84.74, 83.20, 82.31, 99.85), strict=True
            )
        },
        **{
            f"detection_{m}": v
            for m, v in zip(
                DETECTION_METRICS_P1, (94.96, 99.88, 96.40, 95.67, 95.24, 99.73), strict=True
            )
        },
    }
}

# Paper 1, Table 7: the Group-II test set's detection confusion matrix.
TABLE7: dict[str, dict[str, int]] = {
    "group2_unet_densenet121": {"tn": 26_534, "fp": 31, "fn": 44, "tp": 829},
}

# Paper 2: only the values its text quotes (Results and Abstract); IoU and DSC are per-image
# means (docs/method.md#iou-and-dsc). U-Net ResNet18's DSC is printed "88.1".
P2_LUNG: dict[str, dict[str, float]] = {
    "paper2/lung_fpn_densenet121": {"pixel_iou_per_image": 96.11, "pixel_dsc_per_image": 97.99},
}
P2_INFECTION: dict[str, dict[str, float]] = {
    "paper2/infection_unetpp_densenet121": {
        "pixel_iou_per_image": 83.05,
        "pixel_dsc_per_image": 88.21,
    },
    "paper2/infection_fpn_inceptionv4": {
        "pixel_iou_per_image": 83.08,
        "pixel_dsc_per_image": 88.13,
    },
    "paper2/infection_unet_resnet18": {"pixel_iou_per_image": 82.92, "pixel_dsc_per_image": 88.10},
}
P2_DETECTION: dict[str, dict[str, float]] = {
    "paper2/infection_unet_densenet121": {"detection_sensitivity": 99.66},
    "paper2/infection_fpn_resnet18": {"detection_sensitivity": 99.66},
    "paper2/infection_unetpp_resnet18": {"detection_specificity": 100.00},
}
