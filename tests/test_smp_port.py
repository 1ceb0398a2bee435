"""Porting PyTorch weights into the smp family (`scripts/port_weights.py --family smp`).

Whole smp models (torch.save(model.state_dict())) become run directories that
`scripts/infer.py` uses like a trained one, with smp's own masks; ImageNet encoder files in
torchvision / pretrainedmodels layouts (torchvision's old DenseNet key spelling included)
become encoder weights for paper-2 configs; wrong files are refused naming the first
mismatching tensor and what the file looks like, and leave nothing behind.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qatacov_jax.cli import infer, port_weights
from qatacov_jax.weights import WeightsError, read_manifest
from qatacov_jax.weights.smp_port import read_smp_source
from tests.smp_reference import save_state_dict, torch, torch_logits, torch_model


def _port(tmp_path: Path, src: Path, arch: str, encoder: str, out: str, *extra: str) -> int:
    argv = [str(src), "--family", "smp", "--arch", arch, "--encoder", encoder]
    return port_weights.main([*argv, "--out", str(tmp_path / out), *extra])


def _leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(".")]


def test_ported_smp_model_runs_through_infer_with_smp_masks(tmp_path):
    ref = torch_model("unet", "resnet18")
    # 256x256 (the paper-2 input size): infer's resizing is then the identity.
    rng = np.random.default_rng(0)
    images = []
    for i in range(2):
        smooth = np.kron(rng.integers(0, 256, (16, 16)), np.ones((16, 16))).astype(np.uint8)
        Image.fromarray(smooth).save(tmp_path / f"x{i}.png")
        images.append(smooth)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    inputs = [
        ((np.repeat(img[..., None], 3, -1) / 255.0 - mean) / std).astype(np.float32)
        for img in images
    ]
    # A random model may call (nearly) every pixel one class; shifting the class-1 bias by
    # the median logit margin of the first image makes both classes cover about half of it,
    # so the mask comparison below has pixels of both to compare.
    margin = np.diff(torch_logits(ref, inputs[0][None])[0], axis=-1)
    with torch.no_grad():
        ref.segmentation_head[0].bias[1] -= float(np.median(margin))
    src = save_state_dict(ref, tmp_path / "unet_resnet18.pth")
    assert _port(tmp_path, src, "unet", "resnet18", "run") == 0
    code = infer.main(
        ["--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "maps"),
         str(tmp_path / "x0.png"), str(tmp_path / "x1.png")]
    )  # fmt: skip
    assert code == 0
    for i, x in enumerate(inputs):
        logits = torch_logits(ref, x[None])[0]
        prob = torch.softmax(torch.from_numpy(logits), -1).numpy()[..., 1]
        ours = np.asarray(Image.open(tmp_path / "maps" / f"x{i}_mask.png")) > 0
        decided = np.abs(prob - 0.5) > 1e-4  # pixels float rounding cannot flip
        assert 0.01 < (prob >= 0.5).mean() < 0.99  # a mask with both classes
        np.testing.assert_array_equal(ours[decided], (prob >= 0.5)[decided])


def test_imagenet_encoder_files_port_with_their_heads_dropped(tmp_path):
    import torchvision as tv

    # torchvision's ResNet-18 file layout (with `fc`), ported, then loaded by a paper-2 config.
    src = tmp_path / "resnet18-f37072fd.pth"
    torch.save(tv.models.resnet18().state_dict(), src)
    assert _port(tmp_path, src, "fpn", "resnet18", "r18") == 0
    manifest = read_manifest(tmp_path / "r18")
    assert manifest.architecture == "smp-resnet18"
    assert sorted(manifest.dropped) == ["fc.bias", "fc.weight"]
    # torchvision's old DenseNet spelling (`norm.1`, `conv.2`), as in densenet121-a639ec97.pth.
    state = tv.models.densenet121().state_dict()
    old = {
        re.sub(r"(denselayer\d+\.(?:norm|conv))([12])", r"\1.\2", k): v for k, v in state.items()
    }
    assert any(".norm.1." in k for k in old)
    torch.save(old, tmp_path / "densenet121-a639ec97.pth")
    source = read_smp_source(tmp_path / "densenet121-a639ec97.pth", "unetpp", "densenet121")
    assert not source.whole and source.dropped == ["classifier.weight", "classifier.bias"]


def test_ported_encoder_weights_fill_a_paper2_model(tmp_path):
    import sys

    import torchvision as tv
    from flax import nnx

    from qatacov_jax.training.factory import build_model

    weights = tv.models.resnet18().state_dict()
    torch.save(weights, tmp_path / "r18.pth")
    assert _port(tmp_path, tmp_path / "r18.pth", "fpn", "resnet18", "r18") == 0
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from configs.paper2 import lung_fpn_resnet18

    config = lung_fpn_resnet18.get_config()
    config.model.encoder_weights = str(tmp_path / "r18")
    model, prep = build_model(config, seed=0)
    assert prep.mode == "torch"
    kernel = np.asarray(nnx.state(model)["encoder"]["layer2"]["0"]["conv1"]["kernel"][...])
    np.testing.assert_array_equal(
        kernel, weights["layer2.0.conv1.weight"].numpy().transpose(2, 3, 1, 0)
    )


def test_wrong_files_are_refused_naming_the_tensor_and_the_look_alike(tmp_path, capsys):
    src = save_state_dict(torch_model("unet", "resnet18"), tmp_path / "unet_r18.pth")
    # Another decoder: the first tensor it lacks is named, and the right flags suggested.
    with pytest.raises(
        WeightsError, match=r"unexpected tensor 'decoder\.blocks\.0.*--arch unet --encoder resnet18"
    ):
        read_smp_source(src, "fpn", "resnet18")
    # Another encoder of the same decoder.
    with pytest.raises(
        WeightsError, match=r"tensor 'encoder\.layer1\.0\.conv1\.weight'.*--encoder resnet18"
    ):
        read_smp_source(src, "unet", "resnet50")
    # Through the CLI: exit 2, one line, nothing half-written.
    assert _port(tmp_path, src, "unetpp", "resnet18", "bad") == 2
    assert "--arch unet" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists() and not _leftovers(tmp_path)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_torchscript_and_pickled_models_get_state_dict_advice(tmp_path, capsys):
    model = torch_model("fpn", "resnet18")
    torch.jit.trace(model, torch.zeros(1, 3, 64, 64)).save(str(tmp_path / "scripted.pt"))
    torch.save(model, tmp_path / "pickled.pth")
    for name in ("scripted.pt", "pickled.pth"):
        assert _port(tmp_path, tmp_path / name, "fpn", "resnet18", "out") == 2
        err = capsys.readouterr().err
        assert "torch.save(model.state_dict()" in err, err
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)
