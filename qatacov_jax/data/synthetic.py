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
    # One stream per example, drawn from in a fixed order by the steps below: changing what
    # a step draws changes every later step's values (and so the dataset).
    rng = np.random.default_rng([seed, index, 0])
    positive = is_positive(seed, index, positive_fraction)
    chest = _chest(rng, size, positive)
    img = _normal_radiograph(rng, chest, size)
    infection_field = None
    if positive:
        infection_field = _ground_glass(rng, chest.u, chest.v, chest.lung_fields, size)
        img = img + 1.4 * infection_field * chest.lung_region.clip(0.2, 1)
        findings = ["ggo"]
    else:
        img, findings = _confusers(rng, img, chest)
    image = _acquire(rng, img, size)
    mask, lung_mask = _masks(chest, infection_field)
    return SyntheticExample(image, mask, lung_mask, int(positive), tuple(findings))


@dataclasses.dataclass(frozen=True)
class _Chest:
    """One patient's anatomy on the (S, S) image grid: soft 0..1 maps of each structure."""

    u: np.ndarray  # lateral patient coordinate, 0 = midline
    v: np.ndarray  # cranio-caudal patient coordinate
    torso: np.ndarray
    lungs: np.ndarray
    lung_fields: list[np.ndarray]  # each lung's implicit field (> 0 inside)
    heart: np.ndarray
    mediastinum: np.ndarray
    lung_region: np.ndarray  # the lungs less the heart and mediastinum shadows
    cardiomegaly: bool


def _patient_grid(rng: np.random.Generator, s: int) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) patient coordinates of every pixel: shift, scale and a slight tilt, shared by
    every structure."""
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / np.float32(s)
    cx = 0.5 + rng.normal(0, 0.02)
    cy = 0.5 + rng.normal(0, 0.02)
    scale = rng.uniform(0.9, 1.08)
    tilt = np.deg2rad(rng.normal(0, 3.0))
    u = ((xx - cx) * np.cos(tilt) + (yy - cy) * np.sin(tilt)) / scale  # lateral, 0 = midline
    v = (-(xx - cx) * np.sin(tilt) + (yy - cy) * np.cos(tilt)) / scale  # cranio-caudal
    return u, v


def _lungs(
    rng: np.random.Generator, u: np.ndarray, v: np.ndarray
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Superellipses with domed bases; the patient's right lung is on the image left.

    Returns (both lungs as a soft 0..1 map, each lung's field)."""
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
    return lungs, lung_fields


def _chest(rng: np.random.Generator, s: int, positive: bool) -> _Chest:
    """The anatomy: torso, lungs, heart (enlarged in some controls), mediastinum."""
    u, v = _patient_grid(rng, s)
    torso = _soft(1.0 - (u / 0.46) ** 2 - ((v + 0.02) / 0.62) ** 4, 0.08)
    lungs, lung_fields = _lungs(rng, u, v)
    # Heart: an ellipse on the patient's left (image right), low in the chest.
    cardiomegaly = not positive and rng.random() < 0.18
    heart_w = rng.uniform(0.12, 0.15) * (rng.uniform(1.35, 1.6) if cardiomegaly else 1.0)
    heart_h = rng.uniform(0.13, 0.16) * (rng.uniform(1.15, 1.3) if cardiomegaly else 1.0)
    heart_field = 1.0 - ((u - 0.05 - heart_w * 0.35) / heart_w) ** 2 - ((v - 0.12) / heart_h) ** 2
    heart = _soft(heart_field, 0.12)
    mediastinum = _soft(1.0 - (u / 0.075) ** 2 - ((v + 0.05) / 0.45) ** 6, 0.3)
    lung_region = lungs * (1.0 - heart) * (1.0 - mediastinum)
    return _Chest(
        u, v, torso, lungs, lung_fields, heart, mediastinum, lung_region, bool(cardiomegaly)
    )


def _normal_radiograph(rng: np.random.Generator, chest: _Chest, s: int) -> np.ndarray:
    """(S, S) float densities of a normal chest: soft tissue, air-dark lungs, heart and
    mediastinum, vascular texture, ribs and clavicles, spine."""
    c = chest
    img = 0.06 + 0.42 * c.torso
    img = img - 0.26 * c.lung_region
    img = img + 0.14 * np.maximum(c.heart, c.mediastinum) * c.torso
    # Vascular texture inside the lungs, denser near the hila.
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (s, s)).astype(np.float32), s / 90)
    hila = np.exp(-((np.abs(c.u) - 0.1) ** 2 + (c.v + 0.02) ** 2) / 0.02)
    img = img + (0.02 + 0.04 * hila) * texture * c.lung_region
    ribs = _ribs(rng, c.u, c.v)
    img = img + rng.uniform(0.07, 0.12) * ribs * c.torso * (1.0 + 0.6 * c.lung_region)
    spine = _soft(1.0 - (c.u / 0.04) ** 2, 0.5) * c.torso
    return img + 0.06 * spine


def _ribs(rng: np.random.Generator, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Posterior rib arcs on each side, plus clavicles: a 0..1 map."""
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
    return ribs


def _confusers(
    rng: np.random.Generator, img: np.ndarray, chest: _Chest
) -> tuple[np.ndarray, list[str]]:
    """A control's findings that brighten the lungs without being COVID-19: cardiomegaly
    (drawn with the heart), effusion, nodules. Returns (`img` with them, their names)."""
    findings = []
    if chest.cardiomegaly:
        findings.append("cardiomegaly")
    if rng.random() < 0.2:
        findings.append("effusion")
        img = img + _effusion(rng, chest)
    if rng.random() < 0.2:
        findings.append("nodules")
        img = _add_nodules(rng, img, chest)
    return img, findings


def _effusion(rng: np.random.Generator, chest: _Chest) -> np.ndarray:
    """The density a pleural effusion adds: a dense base with a meniscus, on one side."""
    u, v = chest.u, chest.v
    side = rng.choice((-1.0, 1.0))
    level = rng.uniform(0.0, 0.12)
    # Meniscus: the fluid line climbs towards the lateral chest wall; the fluid is
    # water-dense and homogeneous, so it hides the lung base (not the heart).
    line = level - 2.0 * (side * u - 0.1).clip(0, None) ** 2
    eff = _soft((v - line) / 0.02, 0.5) * (side * u > 0.02) * chest.lungs
    eff = eff * (1.0 - chest.heart) * (1.0 - chest.mediastinum)
    return rng.uniform(0.22, 0.3) * eff


def _add_nodules(rng: np.random.Generator, img: np.ndarray, chest: _Chest) -> np.ndarray:
    """`img` with 1 to 3 small, well-defined round spots in the lungs."""
    u, v = chest.u, chest.v
    for _ in range(rng.integers(1, 4)):
        side = rng.choice((-1.0, 1.0))
        nu = side * rng.uniform(0.1, 0.3)
        nv = rng.uniform(-0.25, 0.15)
        r = rng.uniform(0.012, 0.03)
        nod = _soft(1.0 - ((u - nu) ** 2 + (v - nv) ** 2) / r**2, 0.25)
        img = img + rng.uniform(0.12, 0.22) * nod * chest.lungs
    return img


def _acquire(rng: np.random.Generator, img: np.ndarray, s: int) -> np.ndarray:
    """Acquisition (blur, exposure, noise) of float densities: (S, S) uint8, bright = dense."""
    img = ndimage.gaussian_filter(img, rng.uniform(0.3, 0.9) * s / 256)
    img = np.clip(img, 0, 1)
    img = img ** rng.uniform(0.75, 1.35)
    img = (img - 0.5) * rng.uniform(0.85, 1.2) + 0.5 + rng.normal(0, 0.04)
    sigma = rng.uniform(0.005, 0.03)
    img = img + rng.normal(0, 1, (s, s)).astype(np.float32) * sigma * (0.5 + np.sqrt(img.clip(0)))
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def _masks(chest: _Chest, infection_field: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(infection mask, lung mask), (S, S) uint8 in {0, 255}. The infection is where a
    positive's opacity (`infection_field`; None for a control) is dense enough to be visible,
    inside the lungs."""
    lung_mask = (chest.lung_region > 0.5).astype(np.uint8) * 255
    if infection_field is None:
        return np.zeros(lung_mask.shape, np.uint8), lung_mask
    mask = ((infection_field > 0.06) & (lung_mask > 0)).astype(np.uint8) * 255
    if not mask.any():  # a positive must show some infection: keep its densest spot
        peak = np.unravel_index(np.argmax(infection_field * (lung_mask > 0)), mask.shape)
        mask[peak] = 255
    return mask, lung_mask


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
