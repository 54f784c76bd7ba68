"""Loading and writing both official checkpoint layouts, checked against the official forwards."""

from __future__ import annotations

import argparse
import hashlib

import pytest
import torch

from facefuse.backbones import (checkpoint_filter_fn, checkpoint_hash, get_model, load_backbone, save_adaface,
                                save_insightface)
from facefuse.backbones.checkpoints import infer_structure
from facefuse.errors import ConfigError, DataFormatError, UnsafePickleError

from .official import adaface_forward, adaface_state_dict, insightface_forward, insightface_state_dict

TINY = dict(layers=(1, 1, 1, 1), widths=(16, 32, 64, 128), num_features=128)


def _rgb(n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 112, 112, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


@pytest.mark.parametrize("layers,widths,num_features,arch", [
    ((2, 2, 2, 2), (64, 128, 256, 512), 512, "r18"),
    (TINY["layers"], TINY["widths"], TINY["num_features"], "ir_tiny"),
])
def test_insightface_checkpoint_computes_the_official_forward(tmp_path, layers, widths, num_features, arch):
    sd = insightface_state_dict(layers, widths, num_features)
    torch.save(sd, tmp_path / "backbone.pth")
    model = load_backbone(tmp_path / "backbone.pth")
    assert (model.arch, model.layout, model.training) == (arch, "insightface", False)
    x = _rgb()
    fmap_ref, emb_ref = insightface_forward(sd, x, layers)
    with torch.no_grad():
        fmap, emb = model.forward_features(x), model(x)
    assert fmap.shape == (2, widths[-1], 7, 7)
    _close(fmap, fmap_ref)
    _close(emb, emb_ref)


@pytest.mark.parametrize("units,widths,num_features,arch", [
    ((2, 2, 2, 2), (64, 128, 256, 512), 512, "r18"),
    (TINY["layers"], TINY["widths"], TINY["num_features"], "ir_tiny"),
])
def test_adaface_checkpoint_computes_the_official_forward_on_bgr(tmp_path, units, widths, num_features, arch):
    sd = adaface_state_dict(units, widths, num_features)
    sd["head.kernel"] = torch.randn(num_features, 10)
    sd["head.batch_mean"] = torch.ones(1) * 20
    # a Lightning checkpoint also carries its argparse hyper-parameters and training state
    torch.save({"state_dict": sd, "epoch": 3, "hyper_parameters": argparse.Namespace(arch="ir_18", m=0.4)},
               tmp_path / "adaface_ir18.ckpt")
    model = load_backbone(tmp_path / "adaface_ir18.ckpt")
    assert (model.arch, model.layout, model.training) == (arch, "adaface", False)
    x_rgb = _rgb()
    fmap_ref, emb_ref = adaface_forward(sd, x_rgb.flip(1), units)  # AdaFace's own input is BGR
    with torch.no_grad():
        fmap, emb = model.forward_features(x_rgb), model(x_rgb)
    _close(fmap, fmap_ref)
    _close(emb, emb_ref)
    # AdaFace's forward returns (emb / norm, norm): ours is their product
    norm = torch.norm(emb_ref, 2, 1, True)
    _close(emb, (emb_ref / norm) * norm)


@pytest.mark.parametrize("layers,name", [((3, 13, 30, 3), "r100"), ((3, 4, 14, 3), "r50"),
                                         ((6, 26, 60, 6), "r200")])
def test_depth_is_read_from_keys_in_both_layouts(layers, name):
    shapes_if = {k: torch.empty(v.shape) for k, v in insightface_state_dict(layers, (8, 16, 24, 32), 8).items()}
    assert infer_structure(checkpoint_filter_fn(shapes_if, "insightface")) == (layers, (8, 16, 24, 32), 8)
    shapes_ada = {k: torch.empty(v.shape) for k, v in adaface_state_dict(layers, (8, 16, 24, 32), 8).items()}
    assert infer_structure(checkpoint_filter_fn(shapes_ada, "adaface")) == (layers, (8, 16, 24, 32), 8)


def test_real_r100_adaface_keys_convert_to_a_complete_model():
    model = get_model("ir_101", layout="adaface")
    ours = checkpoint_filter_fn(adaface_state_dict((3, 13, 30, 3), seed=3), "adaface")
    assert set(ours) == set(model.state_dict())
    assert all(ours[k].shape == v.shape for k, v in model.state_dict().items())


@pytest.mark.parametrize("layout,save,name", [("insightface", save_insightface, "backbone.pth"),
                                              ("adaface", save_adaface, "model.ckpt")])
def test_saved_checkpoints_have_official_keys_and_reload_identically(tmp_path, layout, save, name):
    torch.manual_seed(0)
    model = get_model("ir_tiny", layout=layout)
    with torch.no_grad():  # move BN statistics off their defaults so a wrong mapping shows
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    model.eval()
    save(model, tmp_path / name)
    raw = torch.load(tmp_path / name, weights_only=True)
    if layout == "insightface":
        official = insightface_state_dict(TINY["layers"], TINY["widths"], TINY["num_features"])
        assert set(raw) == set(official)
    else:
        official = adaface_state_dict(TINY["layers"], TINY["widths"], TINY["num_features"])
        assert set(raw) == {"state_dict"} and set(raw["state_dict"]) == set(official)
    loaded = load_backbone(tmp_path / name)
    x = _rgb()
    with torch.no_grad():
        _close(loaded(x), model(x))
        _close(loaded.forward_features(x), model.forward_features(x))
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_adaface_save_keeps_the_training_head(tmp_path):
    model = get_model("ir_tiny", layout="adaface")
    save_adaface(model, tmp_path / "a.ckpt", head_state={"kernel": torch.ones(128, 5), "t": torch.zeros(1)})
    sd = torch.load(tmp_path / "a.ckpt", weights_only=True)["state_dict"]
    assert sd["head.kernel"].shape == (128, 5) and "head.t" in sd
    assert load_backbone(tmp_path / "a.ckpt").num_features == 128


def test_layout_structure_mismatch_on_save_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="save_adaface"):
        save_insightface(get_model("ir_tiny", layout="adaface"), tmp_path / "x.pth")
    with pytest.raises(ConfigError, match="save_insightface"):
        save_adaface(get_model("ir_tiny", layout="insightface"), tmp_path / "x.ckpt")
    model = get_model("ir_tiny", layout="adaface")
    with torch.no_grad():
        model.features.bias.fill_(0.5)
    with pytest.raises(ConfigError, match="affine"):
        save_adaface(model, tmp_path / "x.ckpt")


def test_mismatched_checkpoint_lists_unexpected_and_missing_keys(tmp_path):
    sd = insightface_state_dict(**TINY)
    del sd["layer2.0.bn3.weight"]
    sd["layer2.0.se.fc1.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(DataFormatError) as err:
        load_backbone(tmp_path / "broken.pth")
    msg = str(err.value)
    assert "broken.pth" in msg and "layer2.0.se.fc1.weight" in msg and "layer2.0.bn3.weight" in msg


def test_missing_adaface_key_is_named_in_adaface_terms(tmp_path):
    sd = adaface_state_dict(**{"units": TINY["layers"], "widths": TINY["widths"],
                               "num_features": TINY["num_features"]})
    del sd["model.body.2.res_layer.4.weight"]
    torch.save({"state_dict": sd}, tmp_path / "broken.ckpt")
    with pytest.raises(DataFormatError, match=r"model\.body\.2\.res_layer\.4\.weight"):
        load_backbone(tmp_path / "broken.ckpt")


def test_checkpoint_of_neither_layout_is_refused_with_key_lists(tmp_path):
    torch.save({"encoder.weight": torch.zeros(3), "conv1.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "x.pth")
    with pytest.raises(DataFormatError) as err:
        load_backbone(tmp_path / "x.pth")
    msg = str(err.value)
    assert "neither" in msg and "encoder.weight" in msg and "bn1.weight" in msg


def test_wrong_arch_or_layout_argument_is_refused(tmp_path):
    torch.save(insightface_state_dict((2, 2, 2, 2)), tmp_path / "r18.pth")
    with pytest.raises(DataFormatError, match="r34"):
        load_backbone(tmp_path / "r18.pth", arch="r34")
    with pytest.raises(DataFormatError, match="insightface layout"):
        load_backbone(tmp_path / "r18.pth", layout="adaface")
    assert load_backbone(tmp_path / "r18.pth", arch="iresnet18", layout="insightface").arch == "r18"


def test_adaface_bottleneck_checkpoint_is_refused(tmp_path):
    sd = adaface_state_dict(**{"units": TINY["layers"], "widths": TINY["widths"], "num_features": 8})
    sd["model.body.0.res_layer.6.weight"] = torch.zeros(4)  # IR-152/200 bottleneck blocks have 9 res layers
    torch.save({"state_dict": sd}, tmp_path / "ir152.ckpt")
    with pytest.raises(DataFormatError, match="bottleneck"):
        load_backbone(tmp_path / "ir152.ckpt")


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_checkpoint_needing_arbitrary_unpickling_is_refused(tmp_path, capsys):
    torch.save({"state_dict": insightface_state_dict(**TINY), "extra": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(UnsafePickleError, match="evil.pth"):
        load_backbone(tmp_path / "evil.pth")
    assert "must never run" not in capsys.readouterr().out


def test_non_checkpoint_files_raise_data_format_errors(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(DataFormatError, match="junk.pth"):
        load_backbone(tmp_path / "junk.pth")
    with pytest.raises(DataFormatError, match="not found"):
        load_backbone(tmp_path / "absent.pth")


def test_checkpoint_hash_is_sha256_of_the_bytes(tmp_path):
    save_insightface(get_model("ir_tiny"), tmp_path / "b.pth")
    assert checkpoint_hash(tmp_path / "b.pth") == hashlib.sha256((tmp_path / "b.pth").read_bytes()).hexdigest()


def test_ddp_module_prefix_is_accepted(tmp_path):
    sd = insightface_state_dict(**TINY)
    torch.save({"module." + k: v for k, v in sd.items()}, tmp_path / "ddp.pth")
    assert load_backbone(tmp_path / "ddp.pth").arch == "ir_tiny"
