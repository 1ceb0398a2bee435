"""qatacov-jax: COVID-19 infection maps, detection and severity from chest X-rays in JAX/Flax NNX.

Reimplements Degerli et al. (QaTa-COV19 infection maps) and the lung segmentation and
infection-percentage severity of Tahir et al. (COVID-QU-Ex). See README.md for the map of
modules.
"""

__version__ = "0.1.0"
