#!/usr/bin/env bash
# Fetch, here, the wheels benchmarks/gpu_run.sh needs on a GPU machine without network.
#
#   benchmarks/gpu_wheels.sh [PYTHON]     # then carry .whl/ with the working tree
#
# The GPU machine's image already has jax (CUDA), flax, optax, orbax, numpy, scipy, pillow,
# matplotlib, h5py and etils; what our imports need beyond those is fetched here, at the
# versions installed in this environment (PYTHON, default .venv/bin/python), for CPython
# 3.12 on x86-64 Linux, without dependencies (the list is complete). gpu_run.sh installs
# .whl/*.whl into a private folder first thing. Keep .whl/ out of git (.git/info/exclude).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${1:-.venv/bin/python}
BINARY=(grain array_record tensorflow_datasets tensorflow_metadata ml_collections
  immutabledict pydicom portpicker toml simplejson dm-tree clu)
PURE=(promise)  # published as a source archive only: built into a wheel here
version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
mkdir -p .whl
for name in "${BINARY[@]}"; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl "$name==$(version "$name")"
done
for name in "${PURE[@]}"; do
  "$PY" -m pip wheel -q --no-deps -w .whl "$name==$(version "$name")"
done
ls -l .whl
