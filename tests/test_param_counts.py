"""Exact Keras-sense parameter counts of every configuration, pinned (REFERENCE.md s.1).

Built with `nnx.eval_shape`, so no weights are allocated. Each (arch, encoder) is built once
unfrozen; the frozen count comes from freezing that abstract model's encoder in place, and a
few configurations also go through `create_model(..., frozen=True)` to pin that path.
"""

from __future__ import annotations

import pytest
from flax import nnx

from qatacov_jax import paper
from qatacov_jax.models import count_params, create_model, freeze

# FPN (segmentation_models 1.0.1 Keras `FPN(backbone, classes=1, activation='sigmoid')`, i.e.
# pyramid 256, segmentation 128, concat aggregation; counted with Keras): not in the paper.
FPN_COUNTS = {
    ("fpn", "densenet121", False): (9_825_793, 85_952),
    ("fpn", "densenet121", True): (2_955_585, 6_956_160),
    ("fpn", "inceptionv3", False): (24_992_545, 36_736),
    ("fpn", "inceptionv3", True): (3_241_409, 21_787_872),
    ("fpn", "resnet50", False): (26_863_940, 47_878),
    ("fpn", "resnet50", True): (3_409_028, 23_502_790),
}
EXPECTED = {**paper.EXACT_COUNTS, **FPN_COUNTS}
PAIRS = sorted({(arch, enc) for arch, enc, _ in EXPECTED if enc != "chexnet"})


def abstract_model(arch: str, encoder: str, frozen: bool = False):
    return nnx.eval_shape(lambda: create_model(arch, encoder, frozen=frozen, rngs=nnx.Rngs(0)))


def test_expected_table_covers_the_paper_and_fpn():
    assert len(paper.EXACT_COUNTS) == 24
    assert len(PAIRS) == 12
    # The exact counts reproduce every digit Table 8 prints.
    for row in paper.TABLE8:
        trainable, non_trainable = paper.EXACT_COUNTS[(row.arch, row.encoder, row.frozen)]
        assert paper.matches_printed(trainable, row.trainable), row
        assert paper.matches_printed(non_trainable, row.non_trainable), row


@pytest.mark.parametrize("arch,encoder", PAIRS)
def test_counts_match_keras_exactly(arch, encoder):
    model = abstract_model(arch, encoder)
    assert tuple(count_params(model)) == EXPECTED[(arch, encoder, False)]
    freeze(model.encoder)
    assert tuple(count_params(model)) == EXPECTED[(arch, encoder, True)]


@pytest.mark.parametrize("arch,encoder", [("unet", "chexnet"), ("dla", "resnet50")])
def test_create_model_frozen_counts(arch, encoder):
    model = abstract_model(arch, encoder, frozen=True)
    assert tuple(count_params(model)) == EXPECTED[(arch, encoder, True)]


def test_densenet121_encoder_alone_matches_keras_notop():
    from qatacov_jax.models import create_encoder

    encoder = nnx.eval_shape(lambda: create_encoder("densenet121", rngs=nnx.Rngs(0)))
    assert tuple(count_params(encoder)) == paper.DENSENET121_NOTOP
