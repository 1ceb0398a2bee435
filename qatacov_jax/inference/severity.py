"""Infection quantification and severity grade (Tahir et al., COVID-QU-Ex).

The second paper quantifies COVID-19 by superimposing the predicted lung and infection masks
(both predicted from the plain CXR in parallel) and taking the percentage of the lung area
that is infected. It gives *no* grade thresholds. Ours come from the extent score of the
RALE system (Warren et al., Thorax 2018), which radiologists adopted for COVID-19 chest
radiographs (Wong et al., Radiology 2020): involvement of the lung by consolidation/opacity
is scored 0 = none, 1 = < 25%, 2 = 25-50%, 3 = 50-75%, 4 = > 75%. We apply those quartiles
to the infected percentage of the whole lung area and name the grades none / mild /
moderate / severe / critical (`DEFAULT_SCALE`); any other scale is a `SeverityScale` away.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class SeverityScale:
    """Maps the infected % of the lung to a grade.

    Attributes:
      bounds: increasing upper bounds (inclusive, in %) of grades 0 .. len(bounds) - 1; a
        percentage above the last bound gets grade len(bounds).
      names: one name per grade (len(bounds) + 1).
    """

    bounds: tuple[float, ...] = (0.0, 25.0, 50.0, 75.0)
    names: tuple[str, ...] = ("none", "mild", "moderate", "severe", "critical")

    def __post_init__(self) -> None:
        if len(self.names) != len(self.bounds) + 1:
            raise ValueError(
                f"SeverityScale needs len(bounds) + 1 = {len(self.bounds) + 1} names, got "
                f"{len(self.names)}: {self.names}."
            )
        if any(b >= a for a, b in zip(self.bounds[1:], self.bounds[:-1], strict=True)) or any(
            not 0.0 <= b <= 100.0 for b in self.bounds
        ):
            raise ValueError(f"SeverityScale bounds must increase within [0, 100]: {self.bounds}.")

    def grade(self, percent_of_lung: float) -> tuple[int, str]:
        """(grade number, name); (-1, 'unknown') when the percentage is undefined (NaN)."""
        if not np.isfinite(percent_of_lung):
            return -1, "unknown"
        g = int(np.searchsorted(np.asarray(self.bounds), percent_of_lung, side="left"))
        return g, self.names[g]


DEFAULT_SCALE = SeverityScale()


def quantify(
    infection_mask: np.ndarray,
    lung_mask: np.ndarray | None = None,
    *,
    scale: SeverityScale = DEFAULT_SCALE,
) -> dict[str, Any]:
    """Infected area as % of the image and, given a lung mask, % of the lung and a grade.

    Args:
      infection_mask: (H, W) bool (or anything > 0 where infected).
      lung_mask: (H, W) bool lung mask of the same image, or None.
      scale: grade thresholds for the lung percentage.

    Returns:
      dict with `infected_percent_of_image`, and with a lung mask also `lung_percent_of_image`,
      `infected_percent_of_lung` (infection inside the lung / lung area; NaN if no lung was
      found), `severity_grade` (int, -1 if unknown) and `severity` (name).
    """
    inf = np.asarray(infection_mask) > 0
    if inf.ndim != 2:
        raise ValueError(f"infection_mask must be (H, W), got {inf.shape}.")
    out: dict[str, Any] = {"infected_percent_of_image": 100.0 * float(inf.mean())}
    if lung_mask is None:
        return out
    lung = np.asarray(lung_mask) > 0
    if lung.shape != inf.shape:
        raise ValueError(f"lung mask {lung.shape} and infection mask {inf.shape} differ in size.")
    lung_area = int(lung.sum())
    # Only infection inside the lungs counts: predicted infection outside them (e.g. on the
    # heart border) is a segmentation error, not diseased lung.
    pct = 100.0 * float((inf & lung).sum()) / lung_area if lung_area else float("nan")
    grade, name = scale.grade(pct)
    out.update(
        lung_percent_of_image=100.0 * float(lung.mean()),
        infected_percent_of_lung=pct,
        severity_grade=grade,
        severity=name,
    )
    return out
