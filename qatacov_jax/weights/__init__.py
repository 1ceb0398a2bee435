"""Pretrained encoder weights: port Keras `.h5` / PyTorch files to Flax checkpoints and load them.

    out = port("densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5", "densenet121", "w/dn")
    encoder = abstract_encoder("densenet121")  # shapes only: skips the random init
    preprocessing = load_encoder_weights(encoder, out)  # also fills a live model.encoder

See `port.py` for the on-disk format and `tables.py` for the name tables.
"""

from qatacov_jax.weights.errors import WeightsError
from qatacov_jax.weights.manifest import Manifest, read_manifest, weights_preprocessing
from qatacov_jax.weights.port import abstract_encoder, load_encoder_weights, port

__all__ = [
    "Manifest",
    "WeightsError",
    "abstract_encoder",
    "load_encoder_weights",
    "port",
    "read_manifest",
    "weights_preprocessing",
]
