"""The two official layouts written out plainly, independent of facefuse.backbones.

State dicts are built with the key names and shapes of insightface arcface_torch's iresnet.py and
AdaFace's net.py; the forwards are those codebases' forward passes as torch.nn.functional calls
over the raw state dict.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-5


def _bn(sd: dict, prefix: str, n: int, gen: torch.Generator, affine: bool = True, dim: int = 2) -> None:
    if affine:
        sd[prefix + "weight"] = 1.0 + 0.1 * torch.randn(n, generator=gen)
        sd[prefix + "bias"] = 0.1 * torch.randn(n, generator=gen)
    sd[prefix + "running_mean"] = 0.1 * torch.randn(n, generator=gen)
    sd[prefix + "running_var"] = 0.5 + torch.rand(n, generator=gen)
    sd[prefix + "num_batches_tracked"] = torch.tensor(7)


def _conv(cout: int, cin: int, k: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(cout, cin, k, k, generator=gen) * (2.0 / (cin * k * k)) ** 0.5


def insightface_state_dict(layers, widths=(64, 128, 256, 512), num_features=512, seed=0) -> dict:
    """Returns random weights under arcface_torch IResNet's names (every stage starts with a downsample)."""
    gen = torch.Generator().manual_seed(seed)
    sd: dict = {"conv1.weight": _conv(widths[0], 3, 3, gen)}
    _bn(sd, "bn1.", widths[0], gen)
    sd["prelu.weight"] = 0.25 + 0.05 * torch.randn(widths[0], generator=gen)
    cin = widths[0]
    for s, (n, w) in enumerate(zip(layers, widths), 1):
        for j in range(n):
            p = f"layer{s}.{j}."
            _bn(sd, p + "bn1.", cin, gen)
            sd[p + "conv1.weight"] = _conv(w, cin, 3, gen)
            _bn(sd, p + "bn2.", w, gen)
            sd[p + "prelu.weight"] = 0.25 + 0.05 * torch.randn(w, generator=gen)
            sd[p + "conv2.weight"] = _conv(w, w, 3, gen)
            _bn(sd, p + "bn3.", w, gen)
            if j == 0:  # stride 2 always, so arcface_torch always adds the conv downsample here
                sd[p + "downsample.0.weight"] = _conv(w, cin, 1, gen)
                _bn(sd, p + "downsample.1.", w, gen)
            cin = w
    _bn(sd, "bn2.", cin, gen)
    sd["fc.weight"] = torch.randn(num_features, cin * 49, generator=gen) * (1.0 / (cin * 49)) ** 0.5
    sd["fc.bias"] = 0.01 * torch.randn(num_features, generator=gen)
    _bn(sd, "features.", num_features, gen)
    sd["features.weight"] = torch.ones(num_features)  # frozen at 1 by arcface_torch
    return sd


def adaface_state_dict(units, widths=(64, 128, 256, 512), num_features=512, seed=0) -> dict:
    """Returns random weights under AdaFace Backbone's names, "model."-prefixed as in its Lightning ckpt."""
    gen = torch.Generator().manual_seed(seed)
    sd: dict = {"input_layer.0.weight": _conv(widths[0], 3, 3, gen)}
    _bn(sd, "input_layer.1.", widths[0], gen)
    sd["input_layer.2.weight"] = 0.25 + 0.05 * torch.randn(widths[0], generator=gen)
    i = 0
    cin = widths[0]
    for n, w in zip(units, widths):
        for _ in range(n):
            p = f"body.{i}."
            if cin != w:  # MaxPool2d(1, stride) otherwise: no parameters
                sd[p + "shortcut_layer.0.weight"] = _conv(w, cin, 1, gen)
                _bn(sd, p + "shortcut_layer.1.", w, gen)
            _bn(sd, p + "res_layer.0.", cin, gen)
            sd[p + "res_layer.1.weight"] = _conv(w, cin, 3, gen)
            _bn(sd, p + "res_layer.2.", w, gen)
            sd[p + "res_layer.3.weight"] = 0.25 + 0.05 * torch.randn(w, generator=gen)
            sd[p + "res_layer.4.weight"] = _conv(w, w, 3, gen)
            _bn(sd, p + "res_layer.5.", w, gen)
            cin = w
            i += 1
    _bn(sd, "output_layer.0.", cin, gen)
    sd["output_layer.3.weight"] = torch.randn(num_features, cin * 49, generator=gen) * (1.0 / (cin * 49)) ** 0.5
    sd["output_layer.3.bias"] = 0.01 * torch.randn(num_features, generator=gen)
    _bn(sd, "output_layer.4.", num_features, gen, affine=False)
    return {"model." + k: v for k, v in sd.items()}


def _bn_apply(x, sd, p):
    return F.batch_norm(x, sd[p + "running_mean"], sd[p + "running_var"], sd.get(p + "weight"),
                        sd.get(p + "bias"), False, 0.0, EPS)


def insightface_forward(sd: dict, x: torch.Tensor, layers) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (map after bn2, features output) of arcface_torch IResNet.forward (eval mode)."""
    x = F.prelu(_bn_apply(F.conv2d(x, sd["conv1.weight"], padding=1), sd, "bn1."), sd["prelu.weight"])
    for s, n in enumerate(layers, 1):
        for j in range(n):
            p = f"layer{s}.{j}."
            stride = 2 if j == 0 else 1
            out = _bn_apply(x, sd, p + "bn1.")
            out = F.conv2d(out, sd[p + "conv1.weight"], padding=1)
            out = F.prelu(_bn_apply(out, sd, p + "bn2."), sd[p + "prelu.weight"])
            out = _bn_apply(F.conv2d(out, sd[p + "conv2.weight"], stride=stride, padding=1), sd, p + "bn3.")
            if p + "downsample.0.weight" in sd:
                identity = _bn_apply(F.conv2d(x, sd[p + "downsample.0.weight"], stride=stride), sd,
                                     p + "downsample.1.")
            else:
                identity = x
            x = out + identity
    fmap = _bn_apply(x, sd, "bn2.")
    emb = _bn_apply(F.linear(torch.flatten(fmap, 1), sd["fc.weight"], sd["fc.bias"]), sd, "features.")
    return fmap, emb


def adaface_forward(ckpt_sd: dict, x_bgr: torch.Tensor, units) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (map after output_layer.0, output_layer output) of AdaFace Backbone (eval mode, BGR input)."""
    sd = {k[len("model."):]: v for k, v in ckpt_sd.items() if k.startswith("model.")}
    x = F.conv2d(x_bgr, sd["input_layer.0.weight"], padding=1)
    x = F.prelu(_bn_apply(x, sd, "input_layer.1."), sd["input_layer.2.weight"])
    i = 0
    for n in units:
        for u in range(n):
            p = f"body.{i}."
            stride = 2 if u == 0 else 1
            if p + "shortcut_layer.0.weight" in sd:
                shortcut = _bn_apply(F.conv2d(x, sd[p + "shortcut_layer.0.weight"], stride=stride), sd,
                                     p + "shortcut_layer.1.")
            else:
                shortcut = F.max_pool2d(x, 1, stride)
            res = _bn_apply(x, sd, p + "res_layer.0.")
            res = F.conv2d(res, sd[p + "res_layer.1.weight"], padding=1)
            res = F.prelu(_bn_apply(res, sd, p + "res_layer.2."), sd[p + "res_layer.3.weight"])
            res = _bn_apply(F.conv2d(res, sd[p + "res_layer.4.weight"], stride=stride, padding=1), sd,
                            p + "res_layer.5.")
            x = res + shortcut
            i += 1
    fmap = _bn_apply(x, sd, "output_layer.0.")
    out = F.linear(torch.flatten(fmap, 1), sd["output_layer.3.weight"], sd["output_layer.3.bias"])
    return fmap, _bn_apply(out, sd, "output_layer.4.")
