"""Every config file loads, names a real model, and follows the documented naming."""

from __future__ import annotations

import importlib
import itertools
from pathlib import Path

import pytest
import train_utils  # noqa: F401  (repository root on sys.path for `configs`)

from qatacov_jax.training.optim import make_tx
from qatacov_jax.training.rundir import config_to_dict

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
PAPER = [
    f"{a}_{e}{f}"
    for a, e, f in itertools.product(
        ("unet", "unetpp", "dla"), ("densenet121", "chexnet", "incv3", "resnet50"), ("", "_frozen")
    )
]
ALL = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem != "__init__")


def _load(name: str):
    return importlib.import_module(f"configs.{name}").get_config()


def test_every_paper_configuration_has_a_file():
    assert len(PAPER) == 24
    missing = sorted(set(PAPER) - set(ALL))
    assert not missing, missing
    assert {"default", "quickstart", "fpn_densenet121", "lung_fpn_densenet121"} <= set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_config_is_consistent(name):
    config = _load(name)
    config_to_dict(config)  # serialisable (it becomes config.json)
    make_tx(config.optim)
    assert config.model.arch in ("unet", "unetpp", "dla", "fpn", "classifier")
    assert config.model.encoder in ("densenet121", "chexnet", "inceptionv3", "resnet50")
    if name in PAPER:
        arch, enc = name.removesuffix("_frozen").split("_")
        assert config.model.arch == arch
        assert config.model.encoder == {"incv3": "inceptionv3"}.get(enc, enc)
        assert config.model.frozen == name.endswith("_frozen")
        # The paper's settings (docs/method.md, "Training settings").
        assert (config.data.image_size, config.batch_size, config.num_epochs) == (224, 32, 50)
        assert (config.optim.name, config.optim.lr, config.optim.b1, config.optim.b2) == (
            "adam",
            1e-4,
            0.9,
            0.999,
        )
        assert (config.loss.alpha, config.loss.gamma) == (0.25, 2.0)
    doc = importlib.import_module(f"configs.{name}").__doc__
    assert "scripts/train.py" in doc or name == "default", "the command belongs in the docstring"


CLASSIFIERS = [
    "classifier_densenet121",
    "classifier_chexnet",
    "classifier_incv3",
    "classifier_resnet50",
]


def test_classifier_configs_follow_the_paper():
    """The activation-map baseline (docs/method.md): every encoder as a 2-class classifier,
    categorical cross-entropy, Adam 1e-5, 10 epochs, otherwise the segmentation settings."""
    assert set(CLASSIFIERS) <= set(ALL)
    for name in CLASSIFIERS:
        config = _load(name)
        assert config.model.arch == "classifier"
        assert config.loss.to_dict() == {"name": "categorical_crossentropy"}
        assert (config.optim.name, config.optim.lr, config.num_epochs) == ("adam", 1e-5, 10)
        assert (config.data.image_size, config.batch_size, config.fold) == (224, 32, 0)
        assert config.best_metric.startswith("detection_")


def test_classifier_quickstart_reads_the_quickstart_data():
    """Same images as configs/quickstart.py, so the two can be compared image by image."""
    cls, seg = _load("classifier_quickstart"), _load("quickstart")
    assert cls.data.to_dict() == seg.data.to_dict() and cls.fold == seg.fold
    assert cls.model.arch == "classifier" and cls.model.encoder == seg.model.encoder


def test_lung_config_targets_lungs_at_256():
    config = _load("lung_fpn_densenet121")
    assert config.data.dataset == "covid_qu_ex/lung" and config.data.target == "lung"
    assert config.data.image_size == 256 and config.model.arch == "fpn"
