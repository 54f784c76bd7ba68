"""The IResNet factory and its two structural layouts."""

from __future__ import annotations

import pytest
import torch

from facefuse.backbones import ARCHS, get_model
from facefuse.errors import ConfigError


@pytest.mark.parametrize("name,channels,emb", [("ir_nano", 64, 64), ("ir_tiny", 128, 128), ("ir_small", 256, 256),
                                                ("ir_18", 512, 512)])
def test_forward_features_is_7x7_and_forward_is_the_embedding(name, channels, emb):
    model = get_model(name).eval()
    x = torch.zeros(2, 3, 112, 112)
    with torch.no_grad():
        assert model.forward_features(x).shape == (2, channels, 7, 7)
        assert model(x).shape == (2, emb)
    assert model.out_channels == channels


def test_official_depths_match_arcface_torch():
    assert ARCHS["r18"].layers == (2, 2, 2, 2) and ARCHS["r34"].layers == (3, 4, 6, 3)
    assert ARCHS["r50"].layers == (3, 4, 14, 3) and ARCHS["r100"].layers == (3, 13, 30, 3)
    assert ARCHS["r200"].layers == (6, 26, 60, 6)
    assert get_model("iresnet100").arch == get_model("ir_101").arch == "r100"
    assert get_model("r18", num_features=256).num_features == 256


def test_layouts_differ_only_in_shortcut_embedding_bn_and_channel_order():
    ins, ada = get_model("ir_tiny", layout="insightface"), get_model("ir_tiny", layout="adaface")
    assert ins.layer1[0].downsample is not None and ada.layer1[0].downsample is None
    assert ada.layer2[0].downsample is not None  # the width changes there
    assert ins.features.bias.requires_grad and not ada.features.bias.requires_grad
    assert not ins.features.weight.requires_grad
    assert ada.input_bgr and not ins.input_bgr


def test_adaface_layout_reverses_channels_of_its_input():
    model = get_model("ir_tiny", layout="adaface").eval()
    x = torch.rand(1, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        flipped_inside = model(x)
        model.input_bgr = False
        assert torch.allclose(flipped_inside, model(x.flip(1)))


def test_bad_names_and_shapes_are_config_errors():
    with pytest.raises(ConfigError, match="r100"):
        get_model("resnet100")
    with pytest.raises(ConfigError, match="layout"):
        get_model("r18", layout="mxnet")
    with pytest.raises(ConfigError, match="widths"):
        get_model("ir_tiny", widths=(16, 16, 32, 64))


@pytest.mark.parametrize("layout", ["insightface", "adaface"])
def test_channels_last_inference_matches_the_default_path_and_keeps_grad_path_contiguous(layout):
    torch.manual_seed(0)
    model = get_model("ir_nano", layout=layout).eval()
    x = torch.rand(5, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        ref = model.forward_features(x)
    fast = model.prepare_channels_last_inference()
    assert fast is model and not model.training
    with torch.no_grad():
        out = model.forward_features(x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2))
    assert out.is_contiguous() and out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    # with grad enabled the input goes in contiguous (torch 2.13 CPU conv backward on
    # channels-last input at small widths is the case forward_features must avoid)
    seen = []
    handle = model.conv1.register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous()))
    model.forward_features(x.requires_grad_(True)).sum().backward()
    handle.remove()
    assert seen == [True]
