"""The names of a run directory's files and folders (`training.rundir`, `training.checkpoint`).

No JAX, Flax or orbax here: the CLIs' flags and the web app's model descriptions need the
names, and a server running an ONNX export must not load JAX to learn them.
"""

from __future__ import annotations

CONFIG_FILE = "config.json"
PREPROCESSING_FILE = "preprocessing.json"
RESULTS_FILE = "results.json"
CHECKPOINT_DIR = "checkpoints"
# The folders under `checkpoints/`: periodic checkpoints (resume), the selected model, and
# unreadable checkpoints moved aside (never deleted).
LATEST = "latest"
BEST = "best"
CORRUPT = "corrupt"
# The checkpoints of a run a model can be loaded from (`load_model(which=)`, the CLIs' --which).
CHECKPOINT_CHOICES = (BEST, LATEST)
