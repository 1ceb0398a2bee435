"""Grad-CAM / Grad-CAM++ (`qatacov_jax.inference.cam`) against cases whose maps are known."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from numerics import assert_within, gamma, mean_bound

from qatacov_jax.inference import cam
from qatacov_jax.models import EncoderClassifier
from qatacov_jax.models.tiny import TinyEncoder
from qatacov_jax.runtime import sharding


class LinearHead:
    """A 'classifier' whose feature map is the input itself (stride 1, C = 3) and whose head
    is GAP + a fixed linear layer, so dS/dA^k_ij = W[k, 1] / (h w) everywhere."""

    def __init__(self, kernel: np.ndarray, stride: int = 1):
        self.kernel = jnp.asarray(kernel, jnp.float32)  # (C, 2)
        self.stride = stride

    def features(self, x: jax.Array) -> jax.Array:
        return x[:, :: self.stride, :: self.stride, :]

    def classify(self, f: jax.Array) -> jax.Array:
        return jnp.mean(f, axis=(1, 2)) @ self.kernel


def _blobs() -> np.ndarray:
    """(2, 8, 8, 3): channel 0 a blob top-left, channel 1 a blob bottom-right, channel 2
    a constant; the second image swaps the blobs' sizes."""
    x = np.zeros((2, 8, 8, 3), np.float32)
    x[0, 1:3, 1:3, 0], x[0, 5:8, 5:8, 1] = 1.0, 2.0
    x[1, 0:4, 0:4, 0], x[1, 6:7, 6:7, 1] = 3.0, 1.0
    x[..., 2] = 0.5
    return x


KERNEL = np.array([[0.0, 1.0], [0.0, -1.0], [0.0, 0.5]], np.float32)  # COVID score: A0 - A1 + A2/2


def test_gradcam_of_a_linear_head_is_known():
    """Weights are W[:, 1] / (h w); the map is relu(A0 - A1 + 0.5 A2) (the constant channel
    shifts every pixel equally), min-max normalised per image."""
    x = _blobs()
    maps, logits = cam.class_activation_maps(
        LinearHead(KERNEL), jnp.asarray(x), methods=["gradcam"]
    )
    got = np.asarray(maps["gradcam"])
    for i in range(2):
        raw = np.maximum(x[i, ..., 0] - x[i, ..., 1] + 0.5 * x[i, ..., 2], 0.0) / 64.0
        want = (raw - raw.min()) / (raw.max() - raw.min())
        np.testing.assert_allclose(got[i], want, atol=1e-6)
    # The top-left blob is the hot spot, the bottom-right one is cold (0 after normalisation).
    assert got[0, 1, 1] == pytest.approx(1.0) and got[0, 6, 6] == 0.0
    # GAP then the 3-channel product: every logit is a float32 sum of h*w*C products, so it
    # is held to the rounding bound of that sum in any order (tests/numerics.py).
    # Roundings on the way: h*w - 1 additions and a division (the mean), then C products and
    # C - 1 additions (the matmul).
    terms = x[..., :, None].astype(np.float64) * KERNEL  # (B, h, w, C, 2)
    n_pixels, n_channels = x.shape[1] * x.shape[2], x.shape[3]
    want = terms.sum(axis=(1, 2, 3)) / n_pixels
    bound = gamma(n_pixels + n_channels) * np.abs(terms).sum(axis=(1, 2, 3)) / n_pixels
    assert_within(logits, want, bound)


def test_gradcampp_of_a_linear_head_is_known():
    """g = W_k / (h w) is constant, so alpha = 1 / (2 + sum A^k g) and
    w_k = h w alpha relu(g) = relu(W_k) / (2 + sum A^k W_k / (h w))."""
    x = _blobs()
    maps, _ = cam.class_activation_maps(LinearHead(KERNEL), jnp.asarray(x), methods=["gradcampp"])
    w_cov = KERNEL[:, 1]
    for i in range(2):
        sums = x[i].sum(axis=(0, 1))  # (C,)
        w = np.maximum(w_cov, 0) / (2.0 + sums * w_cov / 64.0)
        raw = np.maximum(np.einsum("hwc,c->hw", x[i], w), 0.0)
        want = (raw - raw.min()) / (raw.max() - raw.min())
        np.testing.assert_allclose(np.asarray(maps["gradcampp"][i]), want, atol=1e-6)


def _gradcampp_reference(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Chattopadhay et al.'s weights written out per image and channel (float64)."""
    b, _, _, c = a.shape
    out = np.zeros((b, c))
    for i in range(b):
        for k in range(c):
            gk, ak = g[i, ..., k].astype(np.float64), a[i, ..., k].astype(np.float64)
            num, den = gk**2, 2 * gk**2 + ak.sum() * gk**3
            alpha = np.divide(num, den, out=np.zeros_like(num), where=gk > 0)
            out[i, k] = np.sum(alpha * np.maximum(gk, 0))
    return out


def test_gradcampp_weights_match_a_numpy_reference():
    rng = np.random.default_rng(0)
    a = np.maximum(rng.normal(size=(3, 4, 5, 6)), 0).astype(np.float32)  # post-ReLU features
    g = rng.normal(size=(3, 4, 5, 6)).astype(np.float32)
    g[0, 0, 0, :] = 0.0  # zero gradients must give zero weight, not NaN
    got = np.asarray(cam.gradcampp_weights(jnp.asarray(a), jnp.asarray(g)))
    # Only terms with g > 0 count and A >= 0, so every sum here is of non-negative terms (no
    # cancellation): float32's relative error stays under gamma(h*w + a few) ~ 2e-6 in any
    # summation order, inside rtol=1e-5.
    np.testing.assert_allclose(got, _gradcampp_reference(a, g), rtol=1e-5, atol=1e-7)
    # A float32 mean of h*w signed gradients: its last bits depend on the summation order
    # (the CPU's vector width), and near-zero means make any relative tolerance fail; hold it
    # to the rounding bound of that mean in any order instead.
    assert_within(
        np.asarray(cam.gradcam_weights(jnp.asarray(a), jnp.asarray(g))),
        g.astype(np.float64).mean(axis=(1, 2)),
        mean_bound(g, axis=(1, 2)),
    )


def test_maps_are_upsampled_bilinearly_and_normalised():
    """Stride 2: the 4x4 map is resized (bilinear) to 8x8 before the min-max normalisation;
    a constant map (no evidence anywhere) is all zeros, not NaN."""
    x = _blobs()
    maps, _ = cam.class_activation_maps(LinearHead(KERNEL, stride=2), jnp.asarray(x))
    a = x[:, ::2, ::2, :]
    raw = np.maximum(np.einsum("bhwc,c->bhw", a, KERNEL[:, 1] / 16.0), 0.0)
    up = np.asarray(jax.image.resize(raw, (2, 8, 8), "bilinear"))
    lo, hi = up.min(axis=(1, 2), keepdims=True), up.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(np.asarray(maps["gradcam"]), (up - lo) / (hi - lo), atol=1e-6)
    flat = cam.weighted_map(jnp.ones((1, 2, 2, 3)), jnp.ones((1, 3)), (8, 8))
    assert np.all(np.asarray(flat) == 0.0)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="gradcam"):
        cam.class_activation_maps(LinearHead(KERNEL), jnp.asarray(_blobs()), methods=["scorecam"])


def test_jitted_batched_cams_equal_the_plain_computation():
    """`make_cam_fn` on 8 devices (5 images: padded, then trimmed), with BatchNorm folded,
    gives the maps of the unjitted, unfolded classifier image by image."""
    rngs = nnx.Rngs(0)
    model = EncoderClassifier(TinyEncoder(rngs=rngs), rngs=rngs)
    images = np.random.default_rng(1).random((5, 32, 32, 3), np.float32)
    # A few training steps' worth of BatchNorm statistics, so folding is not a no-op.
    model.train()
    model(jnp.asarray(images))
    model.eval()
    mesh = sharding.make_mesh(8)
    maps, logits = cam.make_cam_fn(model, mesh)(images)
    assert logits.shape == (5, 2) and maps["gradcam"].shape == (5, 32, 32)
    for i in range(5):
        want, want_logits = cam.class_activation_maps(model, jnp.asarray(images[i : i + 1]))
        np.testing.assert_allclose(np.asarray(logits[i]), np.asarray(want_logits[0]), atol=1e-4)
        for m in cam.METHODS:
            np.testing.assert_allclose(np.asarray(maps[m][i]), np.asarray(want[m][0]), atol=1e-4)
    assert all(0.0 <= float(v.min()) and float(v.max()) <= 1.0 for v in maps.values())
