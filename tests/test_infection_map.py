"""Infection maps (jet hue/saturation + CXR value) and severity quantification."""

import colorsys

import matplotlib
import numpy as np
import pytest

from qatacov_jax.inference import infection_map as im
from qatacov_jax.inference.severity import DEFAULT_SCALE, SeverityScale, quantify

# The published breakpoints (x, value) of the jet colour map (MATLAB / matplotlib).
JET_BREAKPOINTS = {
    "red": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    "green": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    "blue": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
}


def test_jet_is_the_piecewise_linear_jet():
    p = np.linspace(0, 1, 100_001)
    exact = np.stack(
        [np.interp(p, *zip(*JET_BREAKPOINTS[c], strict=True)) for c in ("red", "green", "blue")],
        axis=-1,
    )
    np.testing.assert_allclose(im.jet(p), exact, atol=1e-4)
    # matplotlib's default 256-entry jet agrees within one table step.
    np.testing.assert_allclose(im.jet(p), matplotlib.colormaps["jet"](p)[:, :3], atol=1.5 / 255 * 4)
    np.testing.assert_allclose(im.jet([0.0, 1.0]), [[0, 0, 0.5], [0.5, 0, 0]], atol=1e-7)


def test_map_is_jet_hue_and_saturation_with_the_xray_value_per_pixel():
    """The paper's recipe, pixel by pixel with the standard library's colorsys."""
    rng = np.random.default_rng(0)
    cxr = rng.integers(0, 256, (12, 10), dtype=np.uint8)
    prob = rng.random((12, 10)).astype(np.float32)
    out = im.infection_map(cxr, prob, floor=0.0)
    for (i, j), p in np.ndenumerate(prob):
        h, s, _ = colorsys.rgb_to_hsv(*im.jet(p).astype(np.float64))
        ref = np.round(np.array(colorsys.hsv_to_rgb(h, s, cxr[i, j] / 255.0)) * 255.0)
        np.testing.assert_allclose(out[i, j], ref, atol=1.0)


@pytest.mark.parametrize(
    "p, expected",
    [
        # jet(1) = (0.5, 0, 0): hue red, saturation 1 -> (v, 0, 0).
        (1.0, lambda v: (v, 0, 0)),
        # jet(0.5) = (0.484, 1, 0.484): pure green hue, saturation 1 - 0.484.
        (0.5, lambda v: (v * (0.15 / 0.31), v, v * (0.15 / 0.31))),
        # jet(0.25) = (0, 0.5, 1): hue 210 deg, saturation 1 -> (0, v/2, v).
        (0.25, lambda v: (0, v / 2, v)),
        # jet(0.2) = (0, 0.3, 1): below green's ramp midpoint, bluer.
        (0.2, lambda v: (0, 0.3 * v, v)),
    ],
)
def test_known_probabilities_give_jet_hue_with_cxr_value(p, expected):
    cxr = np.full((4, 6), 200, np.uint8)
    cxr[:, 3:] = 100  # value must follow the X-ray, not the colour map
    out = im.infection_map(cxr, np.full((4, 6), p, np.float32), floor=0.1)
    for v in (200, 100):
        cols = slice(0, 3) if v == 200 else slice(3, 6)
        np.testing.assert_allclose(out[:, cols].reshape(-1, 3), [expected(v)] * 12, atol=1.0)


def test_below_floor_is_the_input_exactly():
    rng = np.random.default_rng(0)
    cxr = rng.integers(0, 256, (32, 40), dtype=np.uint8)
    prob = rng.random((32, 40)).astype(np.float32)
    out = im.infection_map(cxr, prob, floor=0.3)
    below = prob < 0.3
    assert below.any() and (~below).any()
    for c in range(3):
        np.testing.assert_array_equal(out[..., c][below], cxr[below])
    # Above the floor the pixel is coloured (hue from jet), except where the CXR is black.
    coloured = ~below & (cxr > 10)
    assert np.all(out[coloured].max(-1) - out[coloured].min(-1) > 0)
    # An RGB CXR passes through unchanged too, and float input is rounded like to_uint8.
    rgb = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    np.testing.assert_array_equal(im.infection_map(rgb, prob, floor=0.3)[below], rgb[below])
    f = cxr / 255.0
    np.testing.assert_array_equal(im.infection_map(f, prob, floor=0.3)[below, 0], cxr[below])


def test_zero_probability_map_is_plain_cxr_with_default_floor():
    cxr = np.linspace(0, 1, 64 * 64).reshape(64, 64)
    out = im.infection_map(cxr, np.zeros((64, 64)))
    np.testing.assert_array_equal(
        out, np.repeat(np.round(cxr * 255).astype(np.uint8)[..., None], 3, -1)
    )


def test_size_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="differ in size"):
        im.infection_map(np.zeros((10, 10)), np.zeros((5, 5)))


def test_binary_mask_image():
    m = im.binary_mask_image(np.array([[0.2, 0.5], [0.7, 0.49]])[..., None])
    np.testing.assert_array_equal(m, [[0, 255], [255, 0]])
    assert m.dtype == np.uint8


def test_quantify_percentages_and_grade():
    lung = np.zeros((10, 10), bool)
    lung[:, :5] = True  # 50 lung pixels = 50% of the image
    inf = np.zeros((10, 10), bool)
    inf[:3, :5] = True  # 15 infected lung pixels
    inf[0, 9] = True  # outside the lung: counts for the image, not the lung
    r = quantify(inf, lung)
    assert r["infected_percent_of_image"] == pytest.approx(16.0)
    assert r["lung_percent_of_image"] == pytest.approx(50.0)
    assert r["infected_percent_of_lung"] == pytest.approx(30.0)
    assert (r["severity_grade"], r["severity"]) == (2, "moderate")
    assert quantify(inf) == {"infected_percent_of_image": pytest.approx(16.0)}
    r = quantify(inf, np.zeros((10, 10), bool))
    assert np.isnan(r["infected_percent_of_lung"]) and r["severity"] == "unknown"


@pytest.mark.parametrize(
    "pct, grade", [(0.0, 0), (0.01, 1), (25.0, 1), (25.1, 2), (50.0, 2), (74.9, 3), (75.1, 4)]
)
def test_default_scale_quartiles(pct, grade):
    assert DEFAULT_SCALE.grade(pct)[0] == grade


def test_custom_scale_validation():
    s = SeverityScale(bounds=(10.0, 40.0), names=("low", "mid", "high"))
    assert s.grade(5.0) == (0, "low") and s.grade(60.0) == (2, "high")
    with pytest.raises(ValueError, match="names"):
        SeverityScale(bounds=(10.0,), names=("a",))
    with pytest.raises(ValueError, match="increase"):
        SeverityScale(bounds=(40.0, 10.0), names=("a", "b", "c"))
