"""Loading and writing IResNet checkpoints in the two official layouts.

insightface arcface_torch `backbone.pth`: a bare state dict whose names are IResNet's own
(conv1, bn1, prelu, layer1..4, bn2, fc, features).

AdaFace `*.ckpt` (PyTorch Lightning): {"state_dict": {"model.input_layer.*", "model.body.<i>.*",
"model.output_layer.*", "head.kernel", ...}}; the body is one flat Sequential of blocks, each
`res_layer.0..5` (BN, conv, BN, PReLU, conv, BN) and `shortcut_layer.0..1` (conv, BN) where the
width changes. Only the basic-block depths (IR-18/34/50/101) exist in this layout; AdaFace's
IR-152/200 use bottleneck blocks, which this class does not build, and are refused.

Foreign keys are converted at load time (`checkpoint_filter_fn`), as timm does, so there is
one architecture.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import pickle
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

from facefuse.backbones.iresnet import LAYOUTS, IResNet, arch_name, get_model, resolve_arch
from facefuse.data._io import atomic_write
from facefuse.errors import ConfigError, DataFormatError, UnsafePickleError

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
StateDict = dict[str, torch.Tensor]

#: Globals a checkpoint may reference beyond tensors and containers: Lightning checkpoints
#: (AdaFace's) store their argparse hyper-parameters.
SAFE_GLOBALS = [argparse.Namespace]

_ADAFACE_RES = ("bn1", "conv1", "bn2", "prelu", "conv2", "bn3")  # res_layer.0 .. res_layer.5
_ADAFACE_FIXED = {  # AdaFace prefix -> ours, outside the body
    "input_layer.0.": "conv1.", "input_layer.1.": "bn1.", "input_layer.2.": "prelu.",
    "output_layer.0.": "bn2.", "output_layer.3.": "fc.", "output_layer.4.": "features.",
}
_BODY_KEY = re.compile(r"^body\.(\d+)\.(res_layer|shortcut_layer)\.(\d+)\.(.+)$")
_LAYER_KEY = re.compile(r"^layer([1-4])\.(\d+)\.(.+)$")
_MAX_LISTED = 5


def checkpoint_hash(path: PathLike) -> str:
    """Returns the sha256 hex digest of the checkpoint file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_checkpoint(path: PathLike) -> Any:
    """Returns the object stored in a torch checkpoint, loaded with weights_only=True on CPU."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "checkpoint file not found", fix="check the path in the job file")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch words it "Unsupported global: GLOBAL x" or "unsupported GLOBAL x whose module ..."
        refused = re.search(r"[Uu]nsupported (?:global: )?GLOBAL (\S+)", str(exc))
        what = f"the global {refused.group(1)}" if refused else "a non-tensor object"
        raise UnsafePickleError(
            path, f"checkpoint refused: it needs arbitrary unpickling of {what}", field="pickle",
            fix="re-save only the tensors where the file was made: torch.save(model.state_dict(), path)",
        ) from exc
    except Exception as exc:  # torch raises RuntimeError, KeyError, EOFError... for non-checkpoints
        raise DataFormatError(path, f"not a readable torch checkpoint ({type(exc).__name__}: {exc})",
                              fix="pass a backbone.pth (insightface) or *.ckpt (AdaFace) file") from exc


def unwrap_state_dict(obj: Any, path: Optional[PathLike] = None) -> StateDict:
    """Returns the tensor state dict inside a checkpoint object (Lightning "state_dict", DDP "module.")."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise DataFormatError(path, f"expected a state dict, found {type(obj).__name__}", field="state_dict",
                              fix="pass a file written by torch.save(model.state_dict(), path)")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def detect_layout(sd: Mapping[str, torch.Tensor]) -> Optional[str]:
    """Returns "insightface", "adaface" or None from the key names of a state dict."""
    if any(k.startswith(("model.input_layer.", "input_layer.")) for k in sd):
        return "adaface"
    if "conv1.weight" in sd and any(k.startswith("layer1.") for k in sd):
        return "insightface"
    return None


def _adaface_body_stages(keys: list[str], path: Optional[PathLike]) -> dict[int, tuple[int, int]]:
    """Returns body index -> (stage 1..4, index in stage): a stage starts at block 0 or a conv shortcut."""
    blocks: set[int] = set()
    conv_shortcut: set[int] = set()
    for k in keys:
        m = _BODY_KEY.match(k)
        if not m:
            continue
        i, part, j = int(m.group(1)), m.group(2), int(m.group(3))
        if part == "res_layer" and j >= len(_ADAFACE_RES):
            raise DataFormatError(path, f"unsupported AdaFace block at model.{k}: bottleneck (IR-152/IR-200) "
                                  "and IR-SE blocks are not supported", field=f"model.{k}",
                                  fix="use an IR-18/34/50/101 checkpoint")
        blocks.add(i)
        if part == "shortcut_layer":
            conv_shortcut.add(i)
    mapping: dict[int, tuple[int, int]] = {}
    stage, index = 0, 0
    for i in sorted(blocks):
        if i == 0 or i in conv_shortcut:
            stage, index = stage + 1, 0
        else:
            index += 1
        mapping[i] = (stage, index)
    if blocks and (stage != 4 or sorted(blocks) != list(range(len(blocks)))):
        raise DataFormatError(path, f"AdaFace body has {stage} stages over blocks {sorted(blocks)[:8]}...; "
                              "expected four stages of consecutive blocks", field="model.body",
                              fix="pass an unmodified AdaFace IR checkpoint")
    return mapping


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], layout: str,
                         path: Optional[PathLike] = None) -> StateDict:
    """Returns the state dict renamed to IResNet's own keys; keys it cannot place pass through unchanged.

    AdaFace's training head ("head.*") is dropped; its affine-free embedding BatchNorm1d gets
    weight 1 and bias 0, which computes the same function.
    """
    if layout == "insightface":
        return dict(state_dict)
    if layout != "adaface":
        raise ConfigError(None, f"unknown layout {layout!r}", field="layout", fix=f"use one of {', '.join(LAYOUTS)}")
    sd = {k[len("model."):] if k.startswith("model.") else k: v for k, v in state_dict.items()
          if not k.startswith("head.")}
    stages = _adaface_body_stages(list(sd), path)
    out: StateDict = {}
    for key, value in sd.items():
        new = key
        m = _BODY_KEY.match(key)
        if m:
            stage, index = stages[int(m.group(1))]
            j = int(m.group(3))
            sub = _ADAFACE_RES[j] if m.group(2) == "res_layer" else f"downsample.{j}"
            new = f"layer{stage}.{index}.{sub}.{m.group(4)}"
        else:
            for prefix, ours in _ADAFACE_FIXED.items():
                if key.startswith(prefix):
                    new = ours + key[len(prefix):]
                    break
        out[new] = value
    mean = out.get("features.running_mean")
    if mean is not None:
        out.setdefault("features.weight", torch.ones_like(mean))
        out.setdefault("features.bias", torch.zeros_like(mean))
    return out


def to_adaface_keys(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Returns an IResNet state dict renamed to AdaFace's "model.*" keys (features affine dropped)."""
    start: dict[int, int] = {}  # stage -> body index of its first block
    count: dict[int, int] = defaultdict(int)
    for key in state_dict:
        m = _LAYER_KEY.match(key)
        if m:
            count[int(m.group(1))] = max(count[int(m.group(1))], int(m.group(2)) + 1)
    total = 0
    for stage in sorted(count):
        start[stage] = total
        total += count[stage]
    reverse_fixed = {ours: theirs for theirs, ours in _ADAFACE_FIXED.items()}
    out: StateDict = {}
    for key, value in state_dict.items():
        if key in ("features.weight", "features.bias"):
            continue
        m = _LAYER_KEY.match(key)
        if m:
            body = start[int(m.group(1))] + int(m.group(2))
            sub, rest = m.group(3).split(".", 1)
            if sub == "downsample":
                j, rest = rest.split(".", 1)
                new = f"body.{body}.shortcut_layer.{j}.{rest}"
            else:
                new = f"body.{body}.res_layer.{_ADAFACE_RES.index(sub)}.{rest}"
        else:
            new = key
            for ours, theirs in reverse_fixed.items():
                if key.startswith(ours):
                    new = theirs + key[len(ours):]
                    break
        out["model." + new] = value
    return out


def infer_structure(sd: Mapping[str, torch.Tensor], path: Optional[PathLike] = None
                    ) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """Returns (blocks per stage, stage widths, embedding size) read from IResNet-named keys and shapes."""
    blocks: dict[int, int] = defaultdict(int)
    for key in sd:
        m = _LAYER_KEY.match(key)
        if m and m.group(3) == "conv1.weight":
            blocks[int(m.group(1))] += 1
    needed = ["conv1.weight", "fc.weight"] + [f"layer{s}.0.conv1.weight" for s in range(1, 5)]
    missing = [k for k in needed if k not in sd]
    if missing:
        raise DataFormatError(path, f"cannot read the architecture: missing keys {missing}", field=missing[0],
                              fix="pass an IResNet checkpoint (insightface backbone.pth or AdaFace IR *.ckpt)")
    layers = tuple(blocks[s] for s in range(1, 5))
    widths = tuple(int(sd[f"layer{s}.0.conv1.weight"].shape[0]) for s in range(1, 5))
    return layers, widths, int(sd["fc.weight"].shape[0])


def _official_names(model: IResNet, layout: str) -> dict[str, str]:
    """Returns IResNet key -> the key's name in the given official layout, for error messages."""
    sd = model.state_dict()
    if layout == "insightface":
        return {k: k for k in sd}
    names = {k: k for k in sd}
    kept = [k for k in sd if k not in ("features.weight", "features.bias")]
    names.update(zip(kept, to_adaface_keys(sd)))
    return names


def _check_keys(model: IResNet, sd: Mapping[str, torch.Tensor], layout: str, path: Optional[PathLike]) -> None:
    expected = model.state_dict()
    names = _official_names(model, layout)
    unexpected = [k for k in sd if k not in expected]
    missing = [names[k] for k in expected if k not in sd and not k.endswith("num_batches_tracked")]
    if unexpected or missing:
        raise DataFormatError(
            path, f"checkpoint does not match {model.arch} in the {layout} layout: "
            f"first unexpected keys {unexpected[:_MAX_LISTED]}, first missing keys {missing[:_MAX_LISTED]}",
            field="state_dict", fix="check the arch and layout arguments, or that the file is a complete backbone")
    for key, value in sd.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise DataFormatError(path, f"shape {tuple(value.shape)} where {model.arch} expects "
                                  f"{tuple(expected[key].shape)}", field=names[key],
                                  fix="check the arch argument matches the checkpoint")


def _no_layout_error(sd: Mapping[str, torch.Tensor], arch: Optional[str], path: Optional[PathLike]) -> DataFormatError:
    name = resolve_arch(arch) if arch else "r100"
    ref = get_model(name)
    candidates = {"insightface": list(ref.state_dict()), "adaface": list(to_adaface_keys(ref.state_dict()))}
    best = max(candidates, key=lambda lay: len(set(candidates[lay]) & set(sd)))
    unexpected = [k for k in sd if k not in set(candidates[best])][:_MAX_LISTED]
    missing = [k for k in candidates[best] if k not in sd][:_MAX_LISTED]
    return DataFormatError(
        path, f"neither the insightface nor the AdaFace IResNet layout: compared with {name} ({best} keys), "
        f"first unexpected keys {unexpected}, first missing keys {missing}", field="state_dict",
        fix="pass an insightface backbone.pth or an AdaFace *.ckpt")


def load_backbone(path: PathLike, arch: Optional[str] = None, layout: str = "auto") -> IResNet:
    """Returns the IResNet stored at path, in eval mode, from either official layout.

    Layout ("insightface" or "adaface") and architecture are read from the keys and shapes unless
    given; a given arch must match the checkpoint exactly.
    """
    if layout not in ("auto",) + LAYOUTS:
        raise ConfigError(None, f"unknown layout {layout!r}", field="layout",
                          fix=f"use auto, {', '.join(LAYOUTS)}")
    sd = unwrap_state_dict(read_checkpoint(path), path)
    detected = detect_layout(sd)
    if detected is None:
        raise _no_layout_error(sd, arch, path)
    if layout != "auto" and layout != detected:
        raise DataFormatError(path, f"keys are in the {detected} layout, not {layout}", field="layout",
                              fix=f"pass layout='{detected}' or 'auto'")
    ours = checkpoint_filter_fn(sd, detected, path)
    layers, widths, num_features = infer_structure(ours, path)
    if arch is not None:
        model = get_model(arch, num_features=num_features, layout=detected)
    else:
        model = IResNet(layers, widths, num_features, layout=detected, arch=arch_name(layers, widths))
    _check_keys(model, ours, detected, path)
    model.load_state_dict(ours, strict=False)  # strictness checked above; old BNs lack num_batches_tracked
    model.eval()
    logger.info("loaded %s (%s layout, layers %s, widths %s, %d-d embedding) from %s",
                model.arch, detected, list(layers), list(widths), num_features, path)
    return model


def _tensors(model: IResNet) -> StateDict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def save_insightface(model: IResNet, path: PathLike) -> None:
    """Writes the model as an insightface arcface_torch backbone.pth state dict (atomically)."""
    if model.layout != "insightface":
        raise ConfigError(path, f"model has the {model.layout} structure; the insightface layout cannot hold it "
                          "without changing what it computes", field="layout", fix="use save_adaface")
    with atomic_write(path) as fh:
        torch.save(_tensors(model), fh)
    logger.info("wrote insightface checkpoint %s", path)


def save_adaface(model: IResNet, path: PathLike, head_state: Optional[Mapping[str, torch.Tensor]] = None) -> None:
    """Writes the model as an AdaFace Lightning checkpoint {"state_dict": {"model.*", "head.*"}} (atomically).

    head_state, when given (for example {"kernel": W [E, classes]}), is stored under "head.".
    """
    if model.layout != "adaface":
        raise ConfigError(path, f"model has the {model.layout} structure; the AdaFace layout cannot hold it "
                          "without changing what it computes", field="layout", fix="use save_insightface")
    sd = _tensors(model)
    if not (torch.all(sd["features.weight"] == 1) and torch.all(sd["features.bias"] == 0)):
        raise ConfigError(path, "the embedding BatchNorm1d has affine parameters, which AdaFace's "
                          "BatchNorm1d(affine=False) cannot store", field="features",
                          fix="keep features.weight at 1 and features.bias at 0 (frozen) while training")
    out = to_adaface_keys(sd)
    for key, value in (head_state or {}).items():
        out[f"head.{key}"] = value.detach().cpu().clone()
    with atomic_write(path) as fh:
        torch.save({"state_dict": out}, fh)
    logger.info("wrote AdaFace checkpoint %s", path)
