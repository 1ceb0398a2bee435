"""The bottom layer: XLA flags, the device mesh, atomic file writes and console logging.

Nothing here imports another `qatacov_jax` package, so every other package may use it.
"""
