"""qatacov-jax: COVID-19 infection maps, detection and severity from chest X-rays in JAX/Flax NNX.

Reimplements Degerli et al. (QaTa-COV19 infection maps) and the lung segmentation and
infection-percentage severity of Tahir et al. (COVID-QU-Ex). See docs/layout.md for the map of
modules.
"""

from qatacov_jax.runtime import xla_flags as _xla_flags

__version__ = "0.1.0"

# XLA's fast CPU convolution settings, while JAX's backend has not started yet (XLA reads
# XLA_FLAGS once, at that start); a warning naming the fix if it has. Importing jax is fine.
_xla_flags.apply_at_import()
