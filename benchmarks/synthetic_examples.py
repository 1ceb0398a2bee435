"""Draws a grid of synthetic CXRs: each column an example, above it plain, below it with the
infection mask (red) and the lung outline (green). Columns: 3 COVID-19 (ground-glass
opacities), 2 effusions, 2 cardiomegalies, 2 nodule cases, 3 normals.

    .venv/bin/python benchmarks/synthetic_examples.py benchmarks/results/synthetic_examples.png
"""

from __future__ import annotations

import sys

import numpy as np
from PIL import Image

from qatacov_jax.data.synthetic import generate

WANT = {"ggo": 3, "effusion": 2, "cardiomegaly": 2, "nodules": 2, "": 3}


def main(out: str, size: int = 128, seed: int = 0) -> None:
    got: dict[str, list] = {k: [] for k in WANT}
    i = 0
    while any(len(got[k]) < n for k, n in WANT.items()) and i < 1000:
        e = generate(seed, i, size)
        i += 1
        key = e.findings[0] if len(e.findings) == 1 else ("" if not e.findings else None)
        if key in got and len(got[key]) < WANT[key]:
            got[key].append(e)
    tiles = []
    for key in WANT:
        for e in got[key]:
            grey = np.stack([e.image] * 3, -1)
            rgb = grey.astype(np.float32)
            infected = e.mask > 0
            rgb[infected] = rgb[infected] * 0.45 + np.array([140, 0, 0])
            lung = e.lung_mask > 0
            rgb[(lung ^ np.roll(lung, 1, 0)) | (lung ^ np.roll(lung, 1, 1))] = [0, 200, 0]
            tiles.append(np.concatenate([grey, rgb.clip(0, 255).astype(np.uint8)], 0))
    half = len(tiles) // 2
    grid = np.concatenate([np.concatenate(tiles[:half], 1), np.concatenate(tiles[half:], 1)], 0)
    img = Image.fromarray(grid)
    img = img.resize((img.width * 3 // 4, img.height * 3 // 4), Image.LANCZOS)
    img.quantize(128, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "synthetic_examples.png")
