"""The hybrid loss against direct NumPy evaluations of the paper's equations 5 and 7."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qatacov_jax.training import losses


def _np_sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z.astype(np.float64)))


def _np_focal(z: np.ndarray, p: np.ndarray, alpha: float = 0.25, gamma: float = 2.0) -> float:
    """Eq. 5 pixel by pixel, mean over all pixels, in float64."""
    q = _np_sigmoid(z)
    p = p.astype(np.float64)
    f = -alpha * (1 - q) ** gamma * p * np.log(q) - (1 - alpha) * q**gamma * (1 - p) * np.log(1 - q)
    return float(f.mean())


def _np_dice(z: np.ndarray, p: np.ndarray, per_image: bool, smooth: float = 1e-5) -> float:
    """Eq. 7 with the smoothing constant; sums over (h, w[, c]) per image or over the batch."""
    q = _np_sigmoid(z)
    p = p.astype(np.float64)
    if per_image:
        inter = (p * q).reshape(len(p), -1).sum(1)
        tot = p.reshape(len(p), -1).sum(1) + q.reshape(len(q), -1).sum(1)
        return float(np.mean(1 - (2 * inter + smooth) / (tot + smooth)))
    return float(1 - (2 * (p * q).sum() + smooth) / (p.sum() + q.sum() + smooth))


@pytest.fixture(scope="module")
def batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 3.0, size=(4, 16, 16, 1)).astype(np.float32)
    p = (rng.random((4, 16, 16, 1)) < 0.2).astype(np.float32)
    p[1] = 0.0  # an all-background (control) image inside a mixed batch
    return z, p


def test_focal_matches_equation_5(batch):
    z, p = batch
    got = float(losses.focal_loss(jnp.asarray(z), jnp.asarray(p)))
    np.testing.assert_allclose(got, _np_focal(z, p), rtol=1e-5)
    # gamma = 0 reduces to the alpha-balanced cross-entropy (eq. 4).
    q = _np_sigmoid(z)
    bce = np.mean(-0.25 * p * np.log(q) - 0.75 * (1 - p) * np.log(1 - q))
    got0 = float(losses.focal_loss(jnp.asarray(z), jnp.asarray(p), gamma=0.0))
    np.testing.assert_allclose(got0, bce, rtol=1e-5)


@pytest.mark.parametrize("reduction", ["batch", "image"])
def test_dice_matches_equation_7(batch, reduction):
    z, p = batch
    got = float(losses.dice_loss(jnp.asarray(z), jnp.asarray(p), reduction=reduction))
    np.testing.assert_allclose(got, _np_dice(z, p, per_image=reduction == "image"), rtol=1e-5)


def test_hybrid_is_the_sum(batch):
    z, p = batch
    total, parts = losses.hybrid_loss(jnp.asarray(z), jnp.asarray(p))
    np.testing.assert_allclose(float(total), _np_focal(z, p) + _np_dice(z, p, False), rtol=1e-5)
    np.testing.assert_allclose(float(total), float(parts["focal"] + parts["dice"]), rtol=1e-6)


def test_all_background_masks():
    p = np.zeros((2, 8, 8, 1), np.float32)
    # Confident, correct background: focal ~ 0 and dice exactly 0 thanks to the smoothing.
    z = np.full_like(p, -30.0)
    total, parts = losses.hybrid_loss(jnp.asarray(z), jnp.asarray(p))
    assert float(parts["focal"]) < 1e-12
    assert float(parts["dice"]) == pytest.approx(_np_dice(z, p, False), abs=1e-6)
    assert float(parts["dice"]) < 1e-3
    # Uncertain predictions on an empty mask: dice ~ 1 (no overlap possible), focal per eq. 5.
    z = np.random.default_rng(1).normal(size=p.shape).astype(np.float32)
    for reduction in ("batch", "image"):
        d = float(losses.dice_loss(jnp.asarray(z), jnp.asarray(p), reduction=reduction))
        np.testing.assert_allclose(d, _np_dice(z, p, reduction == "image"), rtol=1e-5)
    np.testing.assert_allclose(
        float(losses.focal_loss(jnp.asarray(z), jnp.asarray(p))), _np_focal(z, p), rtol=1e-5
    )


def test_stable_for_extreme_logits():
    z = jnp.array([-200.0, -50.0, 0.0, 50.0, 200.0]).reshape(1, 1, 5, 1)
    for target in (0.0, 1.0):
        p = jnp.full_like(z, target)
        value, grad = jax.value_and_grad(lambda z, p=p: losses.hybrid_loss(z, p)[0])(z)
        assert np.isfinite(float(value))
        assert np.all(np.isfinite(np.asarray(grad)))
    # A confidently wrong pixel costs alpha * |z| (log q = -|z|), not a clipped constant.
    wrong = losses.focal_loss(jnp.full((1, 1, 1, 1), -200.0), jnp.ones((1, 1, 1, 1)))
    np.testing.assert_allclose(float(wrong), 0.25 * 200.0, rtol=1e-5)


def test_weights_drop_padding(batch):
    z, p = batch
    w = jnp.array([1.0, 1.0, 1.0, 0.0])
    got, _ = losses.hybrid_loss(jnp.asarray(z), jnp.asarray(p), weights=w)
    want = _np_focal(z[:3], p[:3]) + _np_dice(z[:3], p[:3], False)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_bf16_logits_give_float32_loss(batch):
    z, p = batch
    total, _ = losses.hybrid_loss(jnp.asarray(z, jnp.bfloat16), jnp.asarray(p))
    assert total.dtype == jnp.float32


def test_unknown_reduction_is_rejected(batch):
    z, p = batch
    with pytest.raises(ValueError, match="dice_reduction"):
        losses.dice_loss(jnp.asarray(z), jnp.asarray(p), reduction="pixel")


@pytest.mark.slow
def test_matches_segmentation_models_binary_focal_dice_loss(batch):
    """The Keras loss the original models were trained with (on probabilities, clipped)."""
    # Imported here, not at the top, so that collecting this file does not import
    # TensorFlow; tests/conftest.py selects tf-keras for segmentation_models.
    import segmentation_models as sm
    import tensorflow as tf

    z, p = batch
    z = np.clip(z, -10, 10)  # stay inside Keras' probability clipping
    q = tf.constant(_np_sigmoid(z).astype(np.float32))
    want = float(sm.losses.binary_focal_dice_loss(tf.constant(p), q))
    got = float(losses.hybrid_loss(jnp.asarray(z), jnp.asarray(p))[0])
    np.testing.assert_allclose(got, want, rtol=1e-4)
