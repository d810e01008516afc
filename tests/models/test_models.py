"""Every registered CIFAR network through timm's own factory; stems; checkpoints."""

import pickle

import pytest
import timm
import torch

from kdstore.errors import KdstoreError
from kdstore.models.build import build_model, resolve_stem
from kdstore.models.checkpoints import load_checkpoint, save_checkpoint
from kdstore.models.cifar import CIFAR_ARCHS

# Parameter counts for CIFAR-100 as published with the CRD benchmark (Tian et al. 2020), in millions.
PUBLISHED_PARAMS_M = {
    "cifar_resnet8": 0.08,
    "cifar_resnet20": 0.28,
    "cifar_resnet32": 0.47,
    "cifar_resnet56": 0.86,
    "cifar_resnet110": 1.74,
    "cifar_resnet8x4": 1.23,
    "cifar_resnet32x4": 7.43,
    "cifar_wrn_16_2": 0.70,
    "cifar_wrn_40_2": 2.26,
}


@pytest.mark.parametrize("name", list(CIFAR_ARCHS))
def test_registered_in_timm_and_sized_as_published(name):
    assert name in timm.list_models("cifar_*")
    model = timm.create_model(name, num_classes=100)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 100)
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    assert params_m == pytest.approx(PUBLISHED_PARAMS_M[name], rel=0.06)


def test_cifar_net_has_no_pretrained_weights():
    with pytest.raises(KdstoreError, match="no pretrained weights"):
        build_model("cifar_resnet8", 10, 32, pretrained=True)


def test_cifar_stem_on_timm_resnet():
    model, meta = build_model("resnet18", 10, 32, "auto")
    assert meta["stem"] == "cifar"
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    big, meta = build_model("resnet18", 10, 224, "auto")
    assert meta["stem"] == "imagenet" and big.conv1.kernel_size == (7, 7)
    assert resolve_stem("auto", 64) == "cifar" and resolve_stem("auto", 65) == "imagenet"


def test_unknown_model_and_stem():
    with pytest.raises(KdstoreError, match="unknown model 'no_such_net'"):
        build_model("no_such_net", 10, 32)
    with pytest.raises(KdstoreError, match="unknown stem"):
        resolve_stem("weird", 32)
    with pytest.raises(KdstoreError, match="--stem cifar needs a timm ResNet"):
        build_model("vit_tiny_patch16_224", 10, 224, "cifar")


def test_checkpoint_roundtrip_and_pickle_refused(tmp_path):
    model, meta = build_model("cifar_resnet8", 10, 32)
    save_checkpoint(tmp_path / "c.pt", {"state_dict": model.state_dict(), "meta": meta})
    ckpt = load_checkpoint(tmp_path / "c.pt")
    assert ckpt["meta"]["model"] == "cifar_resnet8"

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"state_dict": Evil()}))
    with pytest.raises(KdstoreError, match="cannot be loaded safely"):
        load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(KdstoreError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
