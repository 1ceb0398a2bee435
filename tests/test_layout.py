"""The package layout: dependencies point one way, so there is no import cycle.

Each subpackage of `qatacov_jax` may import only the packages *before* it in `LAYERS`
(module-level and function-local imports alike). A new import that points the other way
fails here, naming the file and the import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "qatacov_jax"

# Bottom to top. `quickstart` is the one top-level module (the README's main job).
LAYERS = (
    "runtime",  # XLA flags, device mesh, atomic files, console
    "metrics",  # streaming statistics, metrics and CIs (pure NumPy)
    "data",  # datasets, image reading, resize, preprocessing, the grain pipeline
    "models",  # encoders, decoders, registry, BatchNorm folding
    "weights",  # porting pretrained encoders
    "training",  # model factory, losses, steps, loop, run directories, cross-validation
    "inference",  # predictor, infection maps, severity, files in -> maps out
    "export",  # deployment artifacts (StableHLO, SavedModel) + manifests
    "evaluation",  # evaluation of runs: reports, plots, example maps
    "benchmarking",  # timing helpers, the paper's Table 8
    "reproduce",  # the papers' tables: grids of runs launched (local, SLURM, k8s) and gathered
    "annotation",  # collaborative annotation: stages, candidate store, decisions, report
    "webapp",  # the demo and annotation web app (FastAPI), its static page
    "quickstart",
    "cli",  # one module per script
)


def _layer(module: str) -> str | None:
    """`qatacov_jax.training.loop` -> `training`; the package root itself -> None."""
    parts = module.split(".")
    if parts[0] != "qatacov_jax" or len(parts) < 2:
        return None
    return parts[1]


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "qatacov_jax":  # `from qatacov_jax import data`
                out.extend((node.lineno, f"qatacov_jax.{a.name}") for a in node.names)
            else:
                out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
    return out


def _own_layer(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_every_subpackage_has_a_layer():
    found = {_own_layer(p) for p in MODULES}
    assert found == set(LAYERS), f"add new subpackages to LAYERS: {sorted(found ^ set(LAYERS))}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_the_layers(path):
    own = _own_layer(path)
    allowed = set(LAYERS[: LAYERS.index(own) + 1])
    wrong = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}"
        for line, module in _imports(path)
        if (layer := _layer(module)) is not None and layer not in allowed
    ]
    assert not wrong, (
        "imports against the layer order (tests/test_layout.py LAYERS):\n" + "\n".join(wrong)
    )


def test_the_layer_check_catches_an_upward_import(tmp_path):
    """The check itself: a `data` module importing `training` is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from qatacov_jax import inference\ndef f():\n    from qatacov_jax.training import loop\n"
    )
    assert [m for _, m in _imports(bad)] == ["qatacov_jax.inference", "qatacov_jax.training"]
    assert _layer("qatacov_jax.training") not in LAYERS[: LAYERS.index("data") + 1]


def test_the_models_import_without_tensorflow():
    """A model user does not pay for TensorFlow (Datasets): seconds of import time that only
    the data pipeline needs. A fresh interpreter, since this one may have loaded them."""
    import subprocess
    import sys

    code = (
        "import sys, qatacov_jax.models\n"
        "print(sorted(m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert out.stdout.strip() == "[]", out.stdout
