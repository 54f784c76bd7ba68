"""The fusion head: local and global attention over two backbone maps, a VIB and a margin head."""

from facefuse.model.config import FusionConfig
from facefuse.model.fusion import FusionModel, FusionOutput, LocalPool
from facefuse.model.global_attention import GlobalAttention, GlobalBlock
from facefuse.model.heads import ArcFaceHead, CosFaceHead, CosineClassifier, build_head
from facefuse.model.layers import Mlp, TokenProjection
from facefuse.model.local_attention import ConvQKV, LocalAttention, LocalBlock, window_mask
from facefuse.model.vib import VariationalBottleneck, kl_divergence

__all__ = [
    "ArcFaceHead", "ConvQKV", "CosFaceHead", "CosineClassifier", "FusionConfig", "FusionModel",
    "FusionOutput", "GlobalAttention", "GlobalBlock", "LocalAttention", "LocalBlock", "LocalPool",
    "Mlp", "TokenProjection", "VariationalBottleneck", "build_head", "kl_divergence",
    "window_mask",
]
