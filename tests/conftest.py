"""Test-session setup shared by all tests.

Eight simulated CPU devices for the whole session, so multi-device code (meshes, sharded
batches, data-parallel steps) is tested on a laptop. The flag must be set before JAX is
imported anywhere, hence here.
"""

import contextlib
import os
import tempfile

# torchvision segfaults when imported into a process that already loaded TensorFlow
# (torchvision 0.29 + tensorflow-cpu 2.21); the smp-family tests need it (through
# segmentation_models_pytorch) in the same process as the TF-backed data code, so it is
# loaded first, before any test module is collected.
with contextlib.suppress(ImportError):
    import torchvision  # noqa: F401

# Before anything imports qatacov_jax: the import adds its XLA defaults to XLA_FLAGS, which
# would make this setdefault a no-op.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

from qatacov_jax.runtime import xla_flags  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The reference frameworks of the parity tests: segmentation_models on tf-keras (Keras 2).
# TensorFlow resolves `tf.keras` from TF_USE_LEGACY_KERAS when it is used, so these hold
# for the whole session: a test that set and then restored them would leave the tests
# after it on Keras 3.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("SM_FRAMEWORK", "tf.keras")
# The same CPU convolution path as the scripts (qatacov_jax/runtime/xla_flags.py): tests exercise what
# users run, and it is faster.
xla_flags.apply_defaults()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Workers of `pytest -n 2` compile many of the same programs (the quickstart train step,
# the full-size encoders); JAX's persistent compilation cache lets the second one load the
# first one's executable instead of compiling again (keys include the program and versions).
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "qatacov_jax_test_xla_cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "2")
