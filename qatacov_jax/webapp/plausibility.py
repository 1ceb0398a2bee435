"""Does an upload look like a chest X-ray? Cheap checks whose failure withholds the decision.

The models were trained on chest radiographs only; on anything else (a photograph, a colour
picture, noise) their output is meaningless, yet a segmentation model still answers with a
confident-looking probability. These checks are deliberately simple, each with a reason a
reader can verify, and tuned so that real radiographs (greyscale, smooth anatomy, a wide
grey range) pass:

* colour: radiographs are greyscale; a grey X-ray saved as a colour JPEG keeps only a few
  levels of chroma, so more than `MAX_COLOUR_FRACTION` of clearly coloured pixels means a
  colour picture (`images.colour_fraction`).
* structure: anatomy varies smoothly, so neighbouring pixels of a radiograph reduced to
  about 128 pixels a side are strongly correlated (above 0.9 on radiographs; about 0 on
  noise). Below `MIN_NEIGHBOUR_CORRELATION` the image is noise or a fine pattern.
* contrast: a radiograph spans a wide grey range; when the 1st..99th percentiles of the
  mapped values lie within `MIN_GREY_SPREAD` of each other the picture is nearly uniform
  (blank, or a deep image whose values were mapped to a narrow band).
* shape: chest radiographs are roughly square (detectors from 14x17 to 17x14 inches);
  a side ratio beyond `MAX_ASPECT` is some other picture.

They do not prove an image *is* a chest X-ray (an abdominal film passes); the page says so.
"""

from __future__ import annotations

import numpy as np

MAX_COLOUR_FRACTION = 0.02
MIN_NEIGHBOUR_CORRELATION = 0.5
MIN_GREY_SPREAD = 0.08
MAX_ASPECT = 2.5
REDUCED_SIDE = 128


def neighbour_correlation(img: np.ndarray, side: int = REDUCED_SIDE) -> float:
    """Correlation of horizontally and vertically adjacent pixels of `img` ((H, W) float)
    block-averaged to about `side` pixels a side; 1.0 for a constant image."""
    h, w = img.shape
    fy, fx = max(1, h // side), max(1, w // side)
    small = img[: h // fy * fy, : w // fx * fx].reshape(h // fy, fy, w // fx, fx).mean((1, 3))
    pairs = [(small[:, :-1], small[:, 1:]), (small[:-1, :], small[1:, :])]
    num = den_a = den_b = 0.0
    for a, b in pairs:
        if a.size == 0:
            continue
        a = a - a.mean()
        b = b - b.mean()
        num += float((a * b).sum())
        den_a += float((a * a).sum())
        den_b += float((b * b).sum())
    if den_a <= 1e-12 or den_b <= 1e-12:
        return 1.0
    return num / np.sqrt(den_a * den_b)


def input_warnings(img: np.ndarray, colour_fraction: float = 0.0) -> list[str]:
    """Reasons why `img` ((H, W) float [0, 1]) does not look like a chest X-ray; empty when
    it passes every check. Each reason is one sentence for the page and the report."""
    out = []
    if colour_fraction > MAX_COLOUR_FRACTION:
        out.append(
            f"{100 * colour_fraction:.0f} % of the pixels are in colour; chest X-rays are greyscale"
        )
    corr = neighbour_correlation(img)
    if corr < MIN_NEIGHBOUR_CORRELATION:
        out.append(
            f"neighbouring pixels are barely related (correlation {corr:.2f}); this looks "
            "like noise or a fine pattern, not anatomy"
        )
    lo, hi = np.percentile(img, [1, 99])
    if hi - lo < MIN_GREY_SPREAD:
        out.append(
            f"nearly uniform: 98 % of the pixels lie within {100 * (hi - lo):.1f} % of the "
            "grey range (blank, or intensities mapped to a narrow band)"
        )
    h, w = img.shape
    if max(h, w) / min(h, w) > MAX_ASPECT:
        out.append(f"{w}x{h} pixels is an unusual shape for a chest X-ray")
    return out
