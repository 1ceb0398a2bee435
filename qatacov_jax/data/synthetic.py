"""Procedural chest-X-ray-like images with exact infection and lung masks (pure NumPy/SciPy).

The synthetic set is the project's embedded default: it lets a new user train, evaluate and
draw infection maps with no download, and gives tests a dataset they can build in a second.
It is meant to be a *fair* stand-in, so detection is not trivial:

* anatomy: a soft-tissue torso, two air-dark lungs with domed diaphragms, a bright
  mediastinum and spine, a heart that bulges into the left lung, posterior rib arcs,
  clavicles, smooth vascular texture;
* acquisition: random exposure (gamma, contrast, brightness), patient shift/scale/tilt,
  Gaussian and signal-dependent noise, mild blur;
* positives (COVID-19): several soft-edged ground-glass opacities, mostly bilateral,
  peripheral and in the lower zones (the typical COVID-19 pattern), with textured haze; the
  infection mask is where the opacity is dense enough to be visible, inside the lungs;
* controls: normal images and *confusers* that also brighten the lungs but are not
  COVID-19 — pleural effusion (dense base with a meniscus), cardiomegaly (a big heart),
  and nodules (small, well-defined round spots) — each with an empty infection mask.

Everything is a function of `(seed, index)` alone, so example `i` is the same whatever order
or process generates it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage


@dataclasses.dataclass(frozen=True)
class SyntheticExample:
    """One generated CXR.

    Attributes:
      image: (S, S) uint8, bright = dense.
      mask: (S, S) uint8 in {0, 255}, infection (empty for controls).
      lung_mask: (S, S) uint8 in {0, 255}, both lungs (the heart shadow excluded).
      label: 1 for COVID-19, 0 for a control.
      findings: what was drawn, e.g. ('ggo',) or ('effusion', 'nodules') or ().
    """

    image: np.ndarray
    mask: np.ndarray
    lung_mask: np.ndarray
    label: int
    findings: tuple[str, ...]


def is_positive(seed: int, index: int, positive_fraction: float) -> bool:
    """Whether example `index` is COVID-19; decided by its own stream so labels are cheap."""
    return bool(np.random.default_rng([seed, index, 1]).random() < positive_fraction)


def generate(seed: int, index: int, size: int, positive_fraction: float = 0.3) -> SyntheticExample:
    """Generates example `index` of the synthetic set with `seed`.

    Args:
      seed: dataset seed.
      index: example number; any non-negative int.
      size: output side S in pixels (>= 32).
      positive_fraction: probability that an example is COVID-19.

    Returns:
      A `SyntheticExample` with (S, S) arrays.
    """
    if size < 32:
        raise ValueError(f"synthetic image size must be >= 32 pixels, got {size}.")
    rng = np.random.default_rng([seed, index, 0])
    positive = is_positive(seed, index, positive_fraction)
    s = size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / np.float32(s)

    # Patient placement: shift, scale and a slight tilt, shared by every structure.
    cx = 0.5 + rng.normal(0, 0.02)
    cy = 0.5 + rng.normal(0, 0.02)
    scale = rng.uniform(0.9, 1.08)
    tilt = np.deg2rad(rng.normal(0, 3.0))
    u = ((xx - cx) * np.cos(tilt) + (yy - cy) * np.sin(tilt)) / scale  # lateral, 0 = midline
    v = (-(xx - cx) * np.sin(tilt) + (yy - cy) * np.cos(tilt)) / scale  # cranio-caudal

    # Torso and soft tissue.
    torso = _soft(1.0 - (u / 0.46) ** 2 - ((v + 0.02) / 0.62) ** 4, 0.08)
    img = 0.06 + 0.42 * torso

    # Lungs: superellipses with domed bases; patient's right lung is on the image left.
    lungs = np.zeros_like(u)
    lung_fields = []
    for side in (-1.0, 1.0):
        lx = side * rng.uniform(0.17, 0.2)
        half_w = rng.uniform(0.12, 0.145)
        top = rng.uniform(-0.34, -0.3)
        base = rng.uniform(0.2, 0.27) - (0.02 if side > 0 else 0.0)
        ru = (u - lx) / half_w
        mid = (top + base) / 2
        rv = (v - mid) / ((base - top) / 2)
        # Dome: the base rises towards the midline; the apex is rounder than the base.
        dome = 0.25 * (1 - np.clip(side * (u - lx) / half_w * -1 + 1, 0, 2) / 2)
        field = 1.0 - np.abs(ru) ** 2.4 - np.abs(rv + dome) ** np.where(rv < 0, 2.0, 3.5)
        lung_fields.append(field)
        lungs = np.maximum(lungs, _soft(field, 0.05))

    # Heart: an ellipse on the patient's left (image right), low in the chest.
    cardiomegaly = not positive and rng.random() < 0.18
    heart_w = rng.uniform(0.12, 0.15) * (rng.uniform(1.35, 1.6) if cardiomegaly else 1.0)
    heart_h = rng.uniform(0.13, 0.16) * (rng.uniform(1.15, 1.3) if cardiomegaly else 1.0)
    heart_field = 1.0 - ((u - 0.05 - heart_w * 0.35) / heart_w) ** 2 - ((v - 0.12) / heart_h) ** 2
    heart = _soft(heart_field, 0.12)
    mediastinum = _soft(1.0 - (u / 0.075) ** 2 - ((v + 0.05) / 0.45) ** 6, 0.3)

    lung_region = lungs * (1.0 - heart) * (1.0 - mediastinum)
    img = img - 0.26 * lung_region
    img = img + 0.14 * np.maximum(heart, mediastinum) * torso

    # Vascular texture inside the lungs, denser near the hila.
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (s, s)).astype(np.float32), s / 90)
    hila = np.exp(-((np.abs(u) - 0.1) ** 2 + (v + 0.02) ** 2) / 0.02)
    img = img + (0.02 + 0.04 * hila) * texture * lung_region

    # Ribs: posterior arcs on each side, plus clavicles.
    ribs = np.zeros_like(u)
    n_ribs = 9
    spacing = rng.uniform(0.058, 0.066)
    for side in (-1.0, 1.0):
        lat = np.clip(side * u, 0, None)
        for k in range(n_ribs):
            y0 = -0.33 + k * spacing
            centre = y0 + 0.9 * (lat - 0.05) ** 2 - 0.05 * lat
            width = 0.012 + 0.0015 * k
            band = np.exp(-(((v - centre) / width) ** 2)) * (side * u > 0.02)
            ribs = np.maximum(ribs, band * (side * u < 0.42))
        clav = np.exp(-(((v + 0.36 + 0.25 * (side * u - 0.15) ** 2 - 0.0) / 0.014) ** 2))
        ribs = np.maximum(ribs, clav * ((side * u > 0.03) & (side * u < 0.3)))
    img = img + rng.uniform(0.07, 0.12) * ribs * torso * (1.0 + 0.6 * lung_region)
    spine = _soft(1.0 - (u / 0.04) ** 2, 0.5) * torso
    img = img + 0.06 * spine

    infection_field = np.zeros_like(u)
    findings: list[str] = []
    if positive:
        findings.append("ggo")
        infection_field = _ground_glass(rng, u, v, lung_fields, s)
        img = img + 1.4 * infection_field * lung_region.clip(0.2, 1)
    else:
        if cardiomegaly:
            findings.append("cardiomegaly")
        if rng.random() < 0.2:
            findings.append("effusion")
            side = rng.choice((-1.0, 1.0))
            level = rng.uniform(0.0, 0.12)
            # Meniscus: the fluid line climbs towards the lateral chest wall; the fluid is
            # water-dense and homogeneous, so it hides the lung base (not the heart).
            line = level - 2.0 * (side * u - 0.1).clip(0, None) ** 2
            eff = _soft((v - line) / 0.02, 0.5) * (side * u > 0.02) * lungs
            eff = eff * (1.0 - heart) * (1.0 - mediastinum)
            img = img + rng.uniform(0.22, 0.3) * eff
        if rng.random() < 0.2:
            findings.append("nodules")
            for _ in range(rng.integers(1, 4)):
                side = rng.choice((-1.0, 1.0))
                nu = side * rng.uniform(0.1, 0.3)
                nv = rng.uniform(-0.25, 0.15)
                r = rng.uniform(0.012, 0.03)
                nod = _soft(1.0 - ((u - nu) ** 2 + (v - nv) ** 2) / r**2, 0.25)
                img = img + rng.uniform(0.12, 0.22) * nod * lungs

    # Acquisition: exposure, blur, noise.
    img = ndimage.gaussian_filter(img, rng.uniform(0.3, 0.9) * s / 256)
    img = np.clip(img, 0, 1)
    img = img ** rng.uniform(0.75, 1.35)
    img = (img - 0.5) * rng.uniform(0.85, 1.2) + 0.5 + rng.normal(0, 0.04)
    sigma = rng.uniform(0.005, 0.03)
    img = img + rng.normal(0, 1, (s, s)).astype(np.float32) * sigma * (0.5 + np.sqrt(img.clip(0)))
    image = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)

    lung_mask = (lung_region > 0.5).astype(np.uint8) * 255
    if positive:
        mask = ((infection_field > 0.06) & (lung_mask > 0)).astype(np.uint8) * 255
        if not mask.any():  # a positive must show some infection: keep its densest spot
            peak = np.unravel_index(np.argmax(infection_field * (lung_mask > 0)), mask.shape)
            mask[peak] = 255
    else:
        mask = np.zeros((s, s), np.uint8)
    return SyntheticExample(image, mask, lung_mask, int(positive), tuple(findings))


def _soft(field: np.ndarray, width: float) -> np.ndarray:
    """A smooth 0..1 step of an implicit shape (`field` > 0 inside)."""
    return (0.5 * (1.0 + np.tanh(field / width))).astype(np.float32)


def _ground_glass(
    rng: np.random.Generator,
    u: np.ndarray,
    v: np.ndarray,
    lung_fields: list[np.ndarray],
    s: int,
) -> np.ndarray:
    """Soft, textured opacities: peripheral, lower-zone and (usually) bilateral."""
    field = np.zeros_like(u)
    sides = [-1.0, 1.0] if rng.random() < 0.8 else [rng.choice((-1.0, 1.0))]
    haze = ndimage.gaussian_filter(rng.normal(0, 1, (s, s)).astype(np.float32), s / 40)
    haze = 0.7 + 0.3 * haze / (np.abs(haze).max() + 1e-6)
    for side in sides:
        for _ in range(rng.integers(1, 4)):
            # Peripheral: near the lateral wall; lower zone: below the hilum, mostly.
            gu = side * rng.uniform(0.22, 0.31)
            gv = rng.uniform(-0.05, 0.2) if rng.random() < 0.8 else rng.uniform(-0.25, 0.0)
            ru = rng.uniform(0.04, 0.08)
            rv = rng.uniform(0.05, 0.1)
            blob = np.exp(-(((u - gu) / ru) ** 2 + ((v - gv) / rv) ** 2))
            field = np.maximum(field, rng.uniform(0.1, 0.2) * blob)
    inside = np.maximum(*[(f > 0).astype(np.float32) for f in lung_fields])
    return (field * haze * inside).astype(np.float32)
