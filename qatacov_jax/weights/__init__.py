"""Pretrained encoder weights: port Keras `.h5` / PyTorch files to Flax checkpoints and load them.

    out = port("densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5", "densenet121", "w/dn")
    preprocessing = load_encoder_weights(model.encoder, out)

See `port.py` for the on-disk format and `tables.py` for the name tables.
"""

from qatacov_jax.weights.errors import WeightsError
from qatacov_jax.weights.manifest import Manifest, read_manifest, weights_preprocessing
from qatacov_jax.weights.port import load_encoder_weights, port

__all__ = [
    "Manifest",
    "WeightsError",
    "load_encoder_weights",
    "port",
    "read_manifest",
    "weights_preprocessing",
]
