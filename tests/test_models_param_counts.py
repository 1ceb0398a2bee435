"""Exact Keras-sense parameter counts of every configuration, pinned.

The expected counts are those of docs/original_models.md, "Exact parameter counts".
Every combination of the registries (`ARCHS` x `ENCODERS` x frozen or not) must have a pinned
count: registering an encoder or a decoder without one fails, naming what is missing.
Built with `nnx.eval_shape`, so no weights are allocated. Each (arch, encoder) graph is built
once unfrozen (aliases such as `chexnet` share their graph, and so their count, with the
encoder they alias); the frozen count comes from freezing that abstract model's encoder in
place, and a few configurations also go through `create_model(..., frozen=True)` to pin that
path.
"""

from __future__ import annotations

import pytest
from flax import nnx

from qatacov_jax.benchmarking import paper
from qatacov_jax.models import ARCHS, ENCODERS, count_params, create_model, freeze

# FPN (segmentation_models 1.0.1 Keras `FPN(backbone, classes=1, activation='sigmoid')`, i.e.
# pyramid 256, segmentation 128, concat aggregation; counted with Keras): not in the paper.
FPN_COUNTS = {
    ("fpn", "densenet121", False): (9_825_793, 85_952),
    ("fpn", "densenet121", True): (2_955_585, 6_956_160),
    ("fpn", "inceptionv3", False): (24_992_545, 36_736),
    ("fpn", "inceptionv3", True): (3_241_409, 21_787_872),
    ("fpn", "resnet50", False): (26_863_940, 47_878),
    ("fpn", "resnet50", True): (3_409_028, 23_502_790),
    # CheXNet is DenseNet-121's graph (other weights): the same counts.
    ("fpn", "chexnet", False): (9_825_793, 85_952),
    ("fpn", "chexnet", True): (2_955_585, 6_956_160),
}
EXPECTED = {**paper.EXACT_COUNTS, **FPN_COUNTS}
# Every configuration the registries can build.
COMBINATIONS = [(a, e, f) for a in ARCHS for e in ENCODERS for f in (False, True)]
# The first registered name of each encoder constructor (graph); an alias maps to it.
CANONICAL = {name: next(n for n in ENCODERS if ENCODERS[n] is c) for name, c in ENCODERS.items()}
PAIRS = sorted({(arch, enc) for arch, enc, _ in COMBINATIONS if CANONICAL[enc] == enc})


def abstract_model(arch: str, encoder: str, frozen: bool = False):
    return nnx.eval_shape(lambda: create_model(arch, encoder, frozen=frozen, rngs=nnx.Rngs(0)))


def test_every_registry_combination_has_a_pinned_count():
    missing = [c for c in COMBINATIONS if c not in EXPECTED]
    assert not missing, (
        f"no pinned parameter count for (arch, encoder, frozen) {missing}: count the Keras "
        "model and pin it in FPN_COUNTS here or paper.EXACT_COUNTS"
    )
    unknown = sorted(set(EXPECTED) - set(COMBINATIONS))
    assert not unknown, f"pinned counts for configurations the registries lack: {unknown}"


def test_aliases_pin_the_counts_of_the_encoder_they_alias():
    # Same constructor, same graph: the count built and checked for the aliased name holds.
    aliased = [(a, e, f) for a, e, f in COMBINATIONS if CANONICAL[e] != e]
    assert aliased, "chexnet is an alias of densenet121"
    wrong = [c for c in aliased if EXPECTED[c] != EXPECTED[(c[0], CANONICAL[c[1]], c[2])]]
    assert not wrong, wrong


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


def _table8_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "table8.py"
    spec = importlib.util.spec_from_file_location("table8_params", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table8_params_only_writes_records(tmp_path, capsys):
    import json

    table8 = _table8_script()
    out = tmp_path / "params.json"
    argv = ["--params-only", "--json", str(out), "--configs", "unet:chexnet:frozen", "fpn:resnet50"]
    assert table8.main(argv) == 0
    records = json.loads(out.read_text())
    assert [(r["arch"], r["encoder"], r["frozen"]) for r in records] == [
        ("unet", "chexnet", True),
        ("fpn", "resnet50", True),
        ("fpn", "resnet50", False),
    ]
    for r in records:
        assert (r["trainable"], r["non_trainable"]) == EXPECTED[
            (r["arch"], r["encoder"], r["frozen"])
        ]
    table = capsys.readouterr().out
    assert "| unet | chexnet | yes | 5,189,137 | 6,955,840 | 5.19M | 6.96M | yes |" in table
    # An existing result is never silently replaced.
    with pytest.raises(SystemExit):
        table8.main(argv)
    assert "already exists" in capsys.readouterr().err
    assert json.loads(out.read_text()) == records
    # The default set is the paper's 24 plus FPN on every encoder.
    configs = table8.default_configs()
    assert len(configs) == 32 and set(paper.EXACT_COUNTS) <= set(configs)
