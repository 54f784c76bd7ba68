"""Feature-map extraction and the sharded store every trial reads."""

from facefuse.features.extract import PREPROCESSING, ImageSource, extract_maps, image_source, to_input
from facefuse.features.dataset import (BackbonePair, EvalSet, LiveMaps, PairMaps, TrainSet,
                                       dataset_maps, load_eval_sets, load_train_set)
from facefuse.features.store import CacheKey, ShardStore

__all__ = ["CacheKey", "ShardStore", "PREPROCESSING", "ImageSource", "extract_maps",
           "image_source", "to_input", "BackbonePair", "EvalSet", "LiveMaps", "PairMaps",
           "TrainSet", "dataset_maps", "load_eval_sets", "load_train_set"]
