"""Feature-map extraction and the cache every trial reads."""

from facefuse.features.cache import CacheKey, FeatureCache
from facefuse.features.extract import PREPROCESSING, ImageSource, extract_maps, image_source, to_input
from facefuse.features.dataset import (BackbonePair, EvalSet, LiveMaps, PairMaps, TrainSet,
                                       dataset_maps, load_eval_sets, load_train_set)

__all__ = ["CacheKey", "FeatureCache", "PREPROCESSING", "ImageSource", "extract_maps",
           "image_source", "to_input", "BackbonePair", "EvalSet", "LiveMaps", "PairMaps",
           "TrainSet", "dataset_maps", "load_eval_sets", "load_train_set"]
