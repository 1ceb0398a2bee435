"""TFDS builder `synthetic_cxr`: the embedded default dataset (no download needed).

Examples come from `qatacov_jax.data.synthetic.generate(seed, index, size)`; the train
split holds indices [0, num_train) and the test split [num_train, num_train + num_test), so
the two never overlap and every example is reproducible from the config alone.
"""

from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from qatacov_jax.data import synthetic
from qatacov_jax.data.features import cxr_features

LABELS = ["control", "covid19"]


@dataclasses.dataclass
class SyntheticCxrConfig(tfds.core.BuilderConfig):
    """Sizes of a synthetic set. The config name encodes them (see `synthetic_config`)."""

    image_size: int = 128
    num_train: int = 320
    num_test: int = 80
    seed: int = 0
    positive_fraction: float = 0.3


def synthetic_config(
    image_size: int = 128,
    num_train: int = 320,
    num_test: int = 80,
    seed: int = 0,
    positive_fraction: float = 0.3,
) -> SyntheticCxrConfig:
    """A config whose name encodes every size, so different sets never share a directory."""
    name = f"s{image_size}_n{num_train}x{num_test}_seed{seed}_p{round(positive_fraction * 100)}"
    return SyntheticCxrConfig(
        name=name,
        description="Procedural CXRs with infection and lung masks.",
        image_size=image_size,
        num_train=num_train,
        num_test=num_test,
        seed=seed,
        positive_fraction=positive_fraction,
    )


class SyntheticCxr(tfds.core.GeneratorBasedBuilder):
    """Procedural chest X-rays with COVID-19-like opacities, confusers and masks."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [synthetic_config()]

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=cxr_features(LABELS, infection=True, lung=True),
            supervised_keys=None,
            homepage="https://github.com/qatacov-jax",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # nothing to download or read
        cfg = self.builder_config
        return {
            "train": self._generate_examples(0, cfg.num_train),
            "test": self._generate_examples(cfg.num_train, cfg.num_train + cfg.num_test),
        }

    def _generate_examples(self, start: int, stop: int):
        cfg = self.builder_config
        for index in range(start, stop):
            ex = synthetic.generate(cfg.seed, index, cfg.image_size, cfg.positive_fraction)
            yield (
                index,
                {
                    "image": ex.image[..., None],
                    "mask": ex.mask[..., None],
                    "lung_mask": ex.lung_mask[..., None],
                    "label": ex.label,
                    "filename": f"synthetic_{index:06d}.png",
                },
            )
