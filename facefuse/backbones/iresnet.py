"""IResNet, the face-recognition ResNet of insightface arcface_torch and AdaFace, in one class.

The two official codebases build the same network: a 3x3 stem, four stages of "improved" basic
blocks (BN-conv-BN-PReLU-conv(stride)-BN plus a shortcut), a final BatchNorm2d, a linear layer
over the flattened 7x7 map and a BatchNorm1d. They differ in three places, which the `layout`
option of this class captures (the key names differ too; checkpoints.py converts those):

- shortcut of a block that strides without changing width (only the first block of stage 1 in
  the official widths): insightface uses conv1x1+BN ("downsample"), AdaFace subsamples the
  identity (MaxPool2d(1, stride), i.e. x[..., ::2, ::2]);
- the embedding BatchNorm1d: insightface keeps its bias (weight frozen at 1), AdaFace has no
  affine parameters;
- input channel order: AdaFace weights were trained on BGR, so an AdaFace-layout model reverses
  the channels of its RGB input.

Module names follow insightface (conv1, bn1, prelu, layer1..4, bn2, fc, features), so an
insightface state dict loads as is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from facefuse.errors import ConfigError

logger = logging.getLogger(__name__)


def to_input(images: np.ndarray, flip: bool = False) -> torch.Tensor:
    """Returns a float32 NCHW tensor in [-1, 1] from uint8 NHWC RGB images (mirrored if flip)."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [N, H, W, 3] uint8, got shape {images.shape}")
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()  # [N,H,W,3]->[N,3,H,W]
    if flip:
        x = torch.flip(x, dims=[3])
    return x.div_(127.5).sub_(1.0)


LAYOUTS = ("insightface", "adaface")

#: The map size the final linear layer expects: 112x112 input halved by each of the four stages.
FEATURE_SIZE = 7


class IBasicBlock(nn.Module):
    """Pre-activation-style residual block: BN-conv3x3-BN-PReLU-conv3x3(stride)-BN plus shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 conv_shortcut: bool = False) -> None:
        super().__init__()
        self.stride = stride
        self.bn1 = nn.BatchNorm2d(in_channels, eps=1e-5)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels, eps=1e-5)
        self.prelu = nn.PReLU(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels, eps=1e-5)
        self.downsample: Optional[nn.Sequential] = None
        if conv_shortcut or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels, eps=1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the block output [N, out_channels, H/stride, W/stride]."""
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        if self.downsample is not None:
            identity = self.downsample(x)
        else:
            # MaxPool2d(kernel_size=1, stride) in AdaFace: plain subsampling
            identity = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
        return out + identity


@dataclass(frozen=True)
class ArchSpec:
    """Depth and widths of one named IResNet."""

    layers: tuple[int, int, int, int]
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    num_features: int = 512


#: Named architectures. r18..r200 are arcface_torch's iresnet18..iresnet200 (AdaFace's IR-18/34/50/101
#: have the same depths); ir_tiny and ir_small are this project's narrow, shallow variants for the
#: embedded default, pretrained on the synthetic train set in about a minute on two cores.
ARCHS: dict[str, ArchSpec] = {
    "r18": ArchSpec((2, 2, 2, 2)),
    "r34": ArchSpec((3, 4, 6, 3)),
    "r50": ArchSpec((3, 4, 14, 3)),
    "r100": ArchSpec((3, 13, 30, 3)),
    "r200": ArchSpec((6, 26, 60, 6)),
    "ir_tiny": ArchSpec((1, 1, 1, 1), (16, 32, 64, 128), 128),
    "ir_small": ArchSpec((1, 2, 2, 1), (32, 64, 128, 256), 256),
    "ir_nano": ArchSpec((1, 1, 1, 1), (8, 16, 32, 64), 64),
}

#: Other names the field uses for the same networks (AdaFace's build_model names, insightface's functions).
ALIASES: dict[str, str] = {
    "ir_18": "r18", "ir_34": "r34", "ir_50": "r50", "ir_101": "r100",
    "iresnet18": "r18", "iresnet34": "r34", "iresnet50": "r50", "iresnet100": "r100",
    "iresnet200": "r200",
}


class IResNet(nn.Module):
    """IResNet backbone with `forward_features` (last 7x7 map) and `forward` (official embedding).

    Input: RGB float NCHW in [-1, 1] at 112x112, whatever the layout.
    """

    def __init__(self, layers: Sequence[int], widths: Sequence[int] = (64, 128, 256, 512),
                 num_features: int = 512, layout: str = "insightface", dropout: float = 0.0,
                 arch: str = "custom") -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ConfigError(None, f"unknown layout {layout!r}", field="layout",
                              fix=f"use one of {', '.join(LAYOUTS)}")
        if len(layers) != 4 or len(widths) != 4 or min(layers) < 1:
            raise ConfigError(None, f"need four stages of at least one block, got layers={list(layers)} "
                              f"widths={list(widths)}", field="layers")
        if any(widths[i] == widths[i + 1] for i in range(3)):
            # the AdaFace layout is a flat list of blocks: a stage starts where the width changes
            raise ConfigError(None, f"consecutive stage widths must differ, got {list(widths)}",
                              field="widths")
        self.arch = arch
        self.layout = layout
        self.layers = tuple(int(n) for n in layers)
        self.widths = tuple(int(w) for w in widths)
        self.num_features = int(num_features)
        self.input_bgr = layout == "adaface"
        self.channels_last_inference = False
        stem = self.widths[0]
        self.conv1 = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem, eps=1e-5)
        self.prelu = nn.PReLU(stem)
        conv_shortcut = layout == "insightface"
        in_ch = stem
        for i, (n_blocks, width) in enumerate(zip(self.layers, self.widths)):
            blocks = [IBasicBlock(in_ch, width, stride=2, conv_shortcut=conv_shortcut)]
            blocks += [IBasicBlock(width, width) for _ in range(n_blocks - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            in_ch = width
        self.bn2 = nn.BatchNorm2d(in_ch, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(in_ch * FEATURE_SIZE * FEATURE_SIZE, self.num_features)
        self.features = nn.BatchNorm1d(self.num_features, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)
        # insightface trains only the bias of the embedding BN; AdaFace's has no affine part at all
        self.features.weight.requires_grad = False
        if layout == "adaface":
            self.features.bias.requires_grad = False
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def out_channels(self) -> int:
        """Returns the channel count C of the [N, C, 7, 7] feature map."""
        return self.widths[-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the map after the final BatchNorm2d: [N, 3, 112, 112] -> [N, C, 7, 7]."""
        if self.input_bgr:
            x = x.flip(1)
        if self.channels_last_inference and torch.is_grad_enabled():
            # a graph through channels-last weights can reach torch 2.13's CPU conv backward
            # on channels-last tensors, which crashes the process (see the method's docstring)
            self._leave_channels_last_inference()
        fast = self.channels_last_inference
        x = x.contiguous(memory_format=torch.channels_last if fast else torch.contiguous_format)
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.bn2(x)
        return x.contiguous() if fast else x

    def prepare_channels_last_inference(self) -> "IResNet":
        """Returns self as a frozen, inference-only extractor: eval mode, parameters without
        grad, weights channels-last.

        On CPU, mkldnn convolutions at this project's narrow widths run about 1.5-2x faster on
        channels-last tensors (benchmarks/README.md); outputs are NCHW-contiguous as before and
        equal the default path to float rounding.

        Why inference-only: torch 2.13's CPU convolution backward on channels-last weights
        crashes the whole process (segmentation fault, no Python exception) at small widths on
        some CPUs (seen on AMD EPYC with ir_nano; ir_tiny survives). Frozen parameters keep a
        plain forward from building a graph, and a forward with grad enabled first converts the
        weights back to the contiguous layout (with a warning), so no backward can ever run on
        channels-last weights. Call it only on a backbone that is never trained again.
        """
        self.eval()
        self.requires_grad_(False)
        self.to(memory_format=torch.channels_last)
        self.channels_last_inference = True
        return self

    def _leave_channels_last_inference(self) -> None:
        """Converts the weights back to the contiguous layout and ends channels-last inference."""
        logger.warning("%s backbone prepared for channels-last inference was called with grad "
                       "enabled: converting its weights back to the contiguous layout (a conv "
                       "backward on channels-last weights can crash torch 2.13 on CPU); run "
                       "extraction under torch.no_grad() to keep the faster layout", self.arch)
        self.to(memory_format=torch.contiguous_format)
        self.channels_last_inference = False

    def forward_head(self, fmap: torch.Tensor) -> torch.Tensor:
        """Returns the embedding [N, num_features] from the feature map [N, C, 7, 7]."""
        x = self.dropout(torch.flatten(fmap, 1))  # [N, C, 7, 7] -> [N, C*49]
        return self.features(self.fc(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the official embedding: insightface's `features` output, AdaFace's `output_layer` output.

        AdaFace's own forward then splits this into a unit vector and its norm; their product
        is what is returned here.
        """
        return self.forward_head(self.forward_features(x))


def resolve_arch(name: str) -> str:
    """Returns the canonical architecture name for a name or alias, or raises ConfigError."""
    key = ALIASES.get(name, name)
    if key not in ARCHS:
        raise ConfigError(None, f"unknown backbone architecture {name!r}", field="arch",
                          fix=f"use one of {', '.join(sorted(ARCHS))} (or aliases {', '.join(sorted(ALIASES))})")
    return key


def get_model(name: str, num_features: Optional[int] = None, layout: str = "insightface",
              dropout: float = 0.0, widths: Optional[Sequence[int]] = None) -> IResNet:
    """Returns a freshly initialised IResNet by name ("r100", "ir_50", "ir_tiny", ...).

    num_features defaults to the architecture's own (512 for r18..r200); widths overrides the
    stage widths of the named depth (for experiments with narrower variants).
    """
    key = resolve_arch(name)
    spec = ARCHS[key]
    return IResNet(spec.layers, tuple(widths) if widths is not None else spec.widths,
                   num_features if num_features is not None else spec.num_features,
                   layout=layout, dropout=dropout, arch=key if widths is None else "custom")


def arch_name(layers: Sequence[int], widths: Sequence[int]) -> str:
    """Returns the registered name with these layers and widths, or "custom"."""
    for name, spec in ARCHS.items():
        if tuple(layers) == spec.layers and tuple(widths) == spec.widths:
            return name
    return "custom"
