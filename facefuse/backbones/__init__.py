"""Face-recognition backbones: one IResNet that loads insightface and AdaFace checkpoints.

    model = load_backbone("backbone.pth")        # or an AdaFace *.ckpt; layout and depth detected
    fmap = model.forward_features(x)             # [N, C, 7, 7] after the final BatchNorm2d
    emb = model(x)                               # the official embedding

Input is RGB float NCHW in [-1, 1] for every layout (AdaFace-layout models flip to BGR inside).
Tiny-backbone pretraining for the embedded default lives in facefuse.backbones.pretrain.
"""

from facefuse.backbones.checkpoints import (checkpoint_filter_fn, checkpoint_hash, detect_layout, load_backbone,
                                            read_checkpoint, save_adaface, save_insightface, to_adaface_keys)
from facefuse.backbones.iresnet import ARCHS, LAYOUTS, IBasicBlock, IResNet, get_model

__all__ = [
    "ARCHS", "LAYOUTS", "IBasicBlock", "IResNet", "checkpoint_filter_fn", "checkpoint_hash", "detect_layout",
    "get_model", "load_backbone", "read_checkpoint", "save_adaface", "save_insightface", "to_adaface_keys",
]
