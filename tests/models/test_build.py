"""DeepLabv3+ as models/build.py builds it: shapes and strides, gradients from CE + ReCo, student noise,
weight loading (backbone files, ImageNet weights, a crafted stage weights file refused)."""
from __future__ import annotations

import os
from urllib.error import URLError

import pytest
import torch
import torch.nn.functional as F
import torchvision

from core import checkpoint as ckpt
from losses.reco import reco_loss
from models import BACKBONES, build_model
from models.build import load_weights
from models.pretrained import IMAGENET_WEIGHTS
from tests.helpers import plant_crafted

NUM_CLASSES = 5
H, W = 64, 80


@pytest.fixture(scope="module")
def model_cache():
    """Builds each (backbone, output stride) once per module: ResNet-101 is big."""
    cache = {}

    def get(backbone, output_stride):
        key = (backbone, output_stride)
        if key not in cache:
            torch.manual_seed(0)
            cache[key] = build_model(backbone, num_classes=NUM_CLASSES, output_stride=output_stride, rep_dim=32)
        return cache[key]

    return get


def _labels(n=2, h=H, w=W):
    """Blocky labels with four classes and an ignored strip."""
    label = torch.zeros(n, h, w, dtype=torch.long)
    label[:, :, w // 2:] = 1
    label[:, h // 2:, :] += 2
    label[:, :4, :] = 255
    return label


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_shapes_and_strides(model_cache, backbone, output_stride):
    model = model_cache(backbone, output_stride).eval()
    x = torch.randn(2, 3, H, W)
    with torch.no_grad():
        low_level, high_level = model.backbone(x)
        logits, rep, _ = model(x, return_rep=True)
        plain = model(x)
    assert low_level.shape[-2:] == (H // 4, W // 4)
    assert high_level.shape[-2:] == (H // output_stride, W // output_stride)
    assert high_level.shape[1] == model.backbone.out_channels
    assert logits.shape == (2, NUM_CLASSES, H, W)
    assert rep.shape == (2, 32, H // 4, W // 4)
    assert torch.equal(plain, logits)


def test_any_input_size_including_camvid():
    model = build_model("mobilenet_v2", num_classes=11).eval()
    with torch.no_grad():
        logits, rep, _ = model(torch.randn(1, 3, 360, 480), return_rep=True)
        odd = model(torch.randn(1, 3, 61, 77))
    assert logits.shape == (1, 11, 360, 480) and rep.shape == (1, 256, 90, 120)
    assert odd.shape == (1, 11, 61, 77)


def test_deep_stem_layout(model_cache):
    encoder = model_cache("resnet101_deepstem", 8).backbone
    convs = [m for m in encoder.conv1 if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (3, 64, (3, 3), (2, 2)), (64, 64, (3, 3), (1, 1)), (64, 128, (3, 3), (1, 1))]
    assert encoder.bn1.num_features == 128
    assert encoder.layer1[0].conv1.in_channels == 128
    assert encoder.layer1[0].downsample[0].in_channels == 128
    assert len(encoder.layer3) == 23


def _ce_reco_backward(model, use_ce=True, use_reco=True):
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    x = torch.randn(2, 3, H // 2, W // 2)  # small: this runs ResNet-101 forward + backward
    label = _labels(h=H // 2, w=W // 2)
    logits, rep, _ = model(x, return_rep=True)
    prob = F.interpolate(torch.softmax(logits, 1), size=rep.shape[-2:], mode="bilinear", align_corners=False)
    loss = logits.sum() * 0
    if use_ce:
        loss = loss + F.cross_entropy(logits, label, ignore_index=255)
    if use_reco:
        loss = loss + reco_loss(rep, label, prob.detach(), num_classes=NUM_CLASSES, num_queries=16,
                                num_negatives=32, generator=torch.Generator().manual_seed(0))
    loss.backward()


@pytest.mark.parametrize("backbone,output_stride", [("mobilenet_v2", 16), ("resnet50", 8), ("resnet101_deepstem", 8)])
def test_every_parameter_gets_gradient_from_ce_plus_reco(model_cache, backbone, output_stride):
    model = model_cache(backbone, output_stride)
    _ce_reco_backward(model)
    without_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert without_grad == []


def test_reco_alone_trains_rep_head_and_backbone_but_not_classifier(model_cache):
    model = model_cache("mobilenet_v2", 16)
    _ce_reco_backward(model, use_ce=False)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.representation_head.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.classifier.parameters())
    _ce_reco_backward(model, use_reco=False)  # CE alone never reaches the representation head
    assert all(p.grad is None for p in model.representation_head.parameters())


def test_no_rep_head():
    model = build_model("mobilenet_v2", num_classes=3, rep_head=False)
    assert model.representation_head is None
    with pytest.raises(ValueError, match="rep_head"):
        model(torch.randn(2, 3, 32, 32), return_rep=True)


@pytest.mark.parametrize("backbone,noise", [("mobilenet_v2", {"dropout": 0.5}), ("resnet50", {"stochastic_depth": 0.5})])
def test_noise_only_in_train_mode(backbone, noise):
    torch.manual_seed(0)
    noisy = build_model(backbone, num_classes=3, output_stride=16, rep_head=False, **noise)
    clean = build_model(backbone, num_classes=3, output_stride=16, rep_head=False)
    clean.load_state_dict(noisy.state_dict())  # noise layers add no parameters
    x = torch.randn(2, 3, 32, 32)
    noisy.train(), clean.train()
    torch.manual_seed(1)
    a = noisy(x)
    torch.manual_seed(2)
    b = noisy(x)
    assert not torch.allclose(a, b)  # train mode: noise differs between draws
    assert torch.equal(clean(x), clean(x))  # ... and without noise train mode is deterministic
    clean.load_state_dict(noisy.state_dict())  # same BatchNorm running statistics
    noisy.eval(), clean.eval()
    with torch.no_grad():
        assert torch.allclose(noisy(x), clean(x), atol=1e-6)  # eval: noise is off


# The paper's student noise per backbone (Sec. 3.3), written out here rather than read from the code.
PAPER_NOISE = {"mobilenet_v2": "dropout", "efficientnet_lite0": "dropout",
               "resnet50": "stochastic_depth", "resnet101_deepstem": "stochastic_depth"}


def _noise_rates(model) -> dict:
    from torchvision.ops import StochasticDepth
    rates = {"dropout": 0.0, "stochastic_depth": 0.0}
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            rates["dropout"] = max(rates["dropout"], module.p)
        elif isinstance(module, StochasticDepth):
            rates["stochastic_depth"] = max(rates["stochastic_depth"], module.p)
    return rates


@pytest.mark.parametrize("backbone", BACKBONES)
def test_make_model_gives_each_backbone_its_own_noise_and_no_other(backbone):
    from types import SimpleNamespace
    from core.schema import BACKBONE_NOISE
    from models.build import make_model
    assert set(BACKBONE_NOISE) == set(BACKBONES) == set(PAPER_NOISE)
    cfg = SimpleNamespace(backbone=backbone, output_stride=16, pretrained="none", rep_dim=16, dropout=0.3,
                          stochastic_depth=0.2)
    noisy = _noise_rates(make_model(cfg, 3, rep_head=False, noise=True))
    expected = {"dropout": 0.0, "stochastic_depth": 0.0, PAPER_NOISE[backbone]: cfg.__dict__[PAPER_NOISE[backbone]]}
    assert noisy == pytest.approx(expected)
    assert _noise_rates(make_model(cfg, 3, rep_head=False, noise=False)) == {"dropout": 0.0, "stochastic_depth": 0.0}


def test_stochastic_depth_rates_follow_linear_rule():
    model = build_model("resnet50", num_classes=3, rep_head=False, stochastic_depth=0.32)
    blocks = [b for layer in (model.backbone.layer1, model.backbone.layer2, model.backbone.layer3,
                              model.backbone.layer4) for b in layer]
    assert [b.stochastic_depth.p for b in blocks] == pytest.approx([0.32 * (i + 1) / 16 for i in range(16)])
    assert all(b.stochastic_depth.mode == "row" for b in blocks)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_model("resnet18")
    with pytest.raises(ValueError, match="output_stride"):
        build_model("mobilenet_v2", output_stride=32)
    with pytest.raises(ValueError, match="stochastic_depth"):
        build_model("mobilenet_v2", stochastic_depth=0.1)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_model("mobilenet_v2", pretrained="/nonexistent/nope.pth")


# ---------------------------------------------------------------- pretrained weights
def _assert_backbone_equals(backbone, state):
    """Every backbone tensor came from `state`; the file's only other keys are the ImageNet
    classifier layers DeepLabv3+ drops (and old files may lack the BatchNorm counters)."""
    own = backbone.state_dict()
    for key, value in own.items():
        if key.endswith("num_batches_tracked") and key not in state:
            continue
        assert key in state, f"{key} is not in the weights file"
        assert torch.equal(value, state[key]), key
    extra = [k for k in state if k not in own]
    assert all(k.startswith(("classifier.", "features.18.", "fc.")) for k in extra), extra


@pytest.mark.parametrize("wrapper", [None, "state_dict", "model"])
def test_local_file_round_trip(tmp_path, wrapper):
    torch.manual_seed(3)
    state = build_model("mobilenet_v2", num_classes=3, rep_head=False).backbone.state_dict()
    path = tmp_path / "backbone.pth"
    torch.save(state if wrapper is None else {wrapper: state, "epoch": 7}, path)
    torch.manual_seed(4)
    model = build_model("mobilenet_v2", num_classes=3, rep_head=False, pretrained=str(path))
    _assert_backbone_equals(model.backbone, state)
    assert len(state) == len(model.backbone.state_dict())


def test_deep_stem_local_file(tmp_path, model_cache):
    state = model_cache("resnet101_deepstem", 8).backbone.state_dict()
    state = {k: v + 0.5 if v.is_floating_point() else v for k, v in state.items()}
    path = tmp_path / "deepstem.pth"
    torch.save(state, path)
    model = build_model("resnet101_deepstem", num_classes=3, output_stride=16, pretrained=str(path))
    _assert_backbone_equals(model.backbone, state)


@pytest.mark.parametrize("name,factory", [("mobilenet_v2", torchvision.models.mobilenet_v2),
                                          ("resnet50", torchvision.models.resnet50)])
def test_torchvision_checkpoint_layout_loads(tmp_path, name, factory):
    """A torchvision ImageNet file: classifier dropped, and old files without BN counters accepted."""
    state = {k: v for k, v in factory().state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "tv.pth"
    torch.save(state, path)
    model = build_model(name, num_classes=3, rep_head=False, pretrained=str(path))
    _assert_backbone_equals(model.backbone, state)


@pytest.mark.parametrize("damage,message", [("drop", "missing keys: features.1.conv.1.weight"),
                                            ("extra", "unexpected keys: extra.weight"),
                                            ("shape", "shape mismatches: features.0.0.weight")])
def test_mismatching_file_is_an_error(tmp_path, damage, message):
    state = build_model("mobilenet_v2", num_classes=3, rep_head=False).backbone.state_dict()
    if damage == "drop":
        del state["features.1.conv.1.weight"]
    elif damage == "extra":
        state["extra.weight"] = torch.zeros(1)
    else:
        state["features.0.0.weight"] = torch.zeros(8, 3, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as err:
        build_model("mobilenet_v2", num_classes=3, pretrained=str(path))
    assert message in str(err.value) and str(path) in str(err.value)


def test_file_without_state_dict_is_an_error(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match="holds no state dict"):
        build_model("mobilenet_v2", pretrained=str(path))


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch hub cache and a download that fails as it would without network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    assert torch.hub.get_dir().startswith(str(tmp_path)), "torch.hub.set_dir was called elsewhere"

    def no_network(url, *args, **kwargs):
        raise URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return os.path.join(torch.hub.get_dir(), "checkpoints")


def test_imagenet_without_cache_names_file_and_url(offline_hub):
    weights = IMAGENET_WEIGHTS["mobilenet_v2"]
    expected_path = os.path.join(offline_hub, "mobilenet_v2-b0353104.pth")
    with pytest.raises(FileNotFoundError) as err:
        build_model("mobilenet_v2", pretrained="imagenet")
    assert expected_path in str(err.value) and weights.url in str(err.value)


def test_imagenet_from_cache_needs_no_download(offline_hub):
    state = torchvision.models.mobilenet_v2().state_dict()
    os.makedirs(offline_hub)
    torch.save(state, os.path.join(offline_hub, "mobilenet_v2-b0353104.pth"))
    model = build_model("mobilenet_v2", pretrained="imagenet")
    _assert_backbone_equals(model.backbone, state)


def test_deep_stem_has_no_imagenet_download(offline_hub):
    with pytest.raises(ValueError, match="resnet101_deepstem.*only as a file"):
        build_model("resnet101_deepstem", pretrained="imagenet")


# ---------------------------------------------------------------- stage weights
def test_crafted_stage_weights_are_refused(tmp_path):
    stage = tmp_path / "00_teacher"
    stage.mkdir()
    plant_crafted(stage / "weights.pth", tmp_path / "ran")
    with pytest.raises(ckpt.UnsafeCheckpoint, match=str(stage / "weights.pth")):
        load_weights(stage / "weights.pth")
    assert not (tmp_path / "ran").exists()
