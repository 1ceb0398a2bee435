"""Fast by default: `import qatacov_jax` sets the XLA defaults, and an eval-mode model call
folds BatchNorm, so docs/models.md's plain snippet runs the inference path's program.
(Speed itself is measured in benchmarks/, never here.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from qatacov_jax.models.densenet import DenseNet121
from qatacov_jax.models.folding import count_folded, fold_batchnorm, make_forward
from qatacov_jax.models.segmentation import SegmentationModel, in_eval_mode
from qatacov_jax.models.unet import UNetDecoder
from qatacov_jax.runtime import xla_flags

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter without XLA_FLAGS (plus `env`)."""
    base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "QATACOV_XLA_DEFAULTS")}
    base["PYTHONPATH"] = os.pathsep.join([str(ROOT), base.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def test_import_sets_the_xla_defaults_before_jax_starts():
    out = _python("import os, qatacov_jax; print(os.environ.get('XLA_FLAGS', ''))")
    assert out.stdout.split() == list(xla_flags.default_flags())
    assert "Warning" not in out.stderr
    # A user's own flags stay, in front.
    out = _python(
        "import os, jax, qatacov_jax; print(os.environ['XLA_FLAGS'])", XLA_FLAGS="--a_user_flag=1"
    )
    assert out.stdout.split() == ["--a_user_flag=1", *xla_flags.default_flags()]


@pytest.mark.skipif(not xla_flags.default_flags(), reason="this jaxlib has no defaults to miss")
def test_import_after_jax_started_warns_once_naming_the_fix():
    out = _python("import jax; jax.devices(); import qatacov_jax, qatacov_jax.models")
    lines = [line for line in out.stderr.splitlines() if "RuntimeWarning" in line]
    assert len(lines) == 1, out.stderr
    assert "import qatacov_jax before" in lines[0]
    assert xla_flags.YNN_CONV_OFF in lines[0]
    # Nothing to warn about when the user set the flags themselves, or opted out.
    for env in ({"XLA_FLAGS": xla_flags.YNN_CONV_OFF}, {"QATACOV_XLA_DEFAULTS": "0"}):
        out = _python("import jax; jax.devices(); import qatacov_jax", **env)
        assert "RuntimeWarning" not in out.stderr, (env, out.stderr)


class SmallDenseNet(DenseNet121):
    """DenseNet-121's graph with one dense layer per stage (folds by the DenseNet table)."""

    blocks = (1, 1, 1, 1)
    out_channels = (64, 48, 40, 36, 68)


@pytest.fixture(scope="module")
def small_model() -> SegmentationModel:
    rngs = nnx.Rngs(0)
    encoder = SmallDenseNet(rngs=rngs)
    decoder = UNetDecoder(encoder.out_channels, rngs=rngs, decoder_filters=(16, 8, 8, 8, 8))
    model = SegmentationModel(encoder, decoder, rngs=rngs, arch="unet")
    rng = np.random.default_rng(0)
    for _, bn in model.iter_modules():  # non-trivial statistics, so folding matters
        if isinstance(bn, nnx.BatchNorm):
            c = bn.mean.get_value().shape
            bn.mean.set_value(jnp.asarray(rng.normal(0, 0.3, c), jnp.float32))
            bn.var.set_value(jnp.asarray(rng.uniform(0.3, 2.0, c), jnp.float32))
            bn.bias.set_value(jnp.asarray(rng.normal(0, 0.3, c), jnp.float32))
    return model


def _activation_muls(fn, *args) -> int:
    """Multiplies over batch-sized 4-D arrays in `fn`'s jaxpr (BatchNorm's per-pixel scale;
    a folded BN multiplies only its kernel). Batch 5 tells activations from HWIO kernels."""
    jaxpr = jax.make_jaxpr(fn)(*args)

    def walk(j) -> int:
        n = 0
        for eqn in j.eqns:
            for sub in jax.core.jaxprs_in_params(eqn.params):
                n += walk(sub)
            shape = getattr(eqn.outvars[0].aval, "shape", ())
            n += eqn.primitive.name == "mul" and len(shape) == 4 and shape[0] == 5
        return n

    return walk(jaxpr.jaxpr)


def test_eval_mode_call_is_the_folded_model(small_model):
    model = small_model
    x = np.random.default_rng(1).standard_normal((5, 32, 32, 3), dtype=np.float32)
    model.eval()
    assert in_eval_mode(model)
    # docs/models.md's snippet: split once, merge inside jax.jit.
    graphdef, state = nnx.split(model)

    def plain(s, v):
        return nnx.merge(graphdef, s)(v)

    def unfolded(s, v):
        return nnx.merge(graphdef, s).unfolded(v)

    fast, fast_state = make_forward(model, fold=True)
    assert count_folded(fold_batchnorm(model)) == 1 + 4 + 10  # stem + 4 layers + 5 blocks x 2
    got = np.asarray(jax.jit(plain)(state, x))
    folded = np.asarray(jax.jit(fast)(fast_state, x))
    literal = np.asarray(jax.jit(unfolded)(state, x))
    assert np.abs(literal).max() > 1e-2  # a non-degenerate output
    np.testing.assert_allclose(got, folded, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, literal, rtol=1e-4, atol=1e-4)
    # The eval call runs the folded program: the 15 folded BNs' per-pixel multiplies are gone.
    n_plain, n_fast, n_literal = (
        _activation_muls(plain, state, x),
        _activation_muls(fast, fast_state, x),
        _activation_muls(unfolded, state, x),
    )
    assert n_plain == n_fast == n_literal - 15, (n_plain, n_fast, n_literal)
    # The model itself is untouched: same variables, still unfolded.
    assert count_folded(model) == 0


def test_train_mode_call_never_folds(small_model):
    model = small_model
    model.train()
    assert not in_eval_mode(model)
    graphdef, state = nnx.split(model)
    x = jnp.zeros((5, 32, 32, 3), jnp.float32)
    n_call = _activation_muls(lambda s, v: nnx.merge(graphdef, s)(v), state, x)
    n_literal = _activation_muls(lambda s, v: nnx.merge(graphdef, s).unfolded(v), state, x)
    assert n_call == n_literal > 0
