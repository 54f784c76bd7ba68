"""Synthetic face benchmark written in the real formats (the embedded default's data).

``build_suite(out, seed=0, **size_knobs)`` draws procedural faces (identity = geometry, colours,
texture; image = pose, expression, lighting, occlusion, background) and writes a RecordIO train
set, five .bin verification sets and two IJB-style sets through facefuse.data's writers;
``suite_is_complete(out, seed=0, **size_knobs)`` says whether that exact suite is already there.
"""

from facefuse.synth.suite import MANIFEST, SuiteConfig, build_suite, identity_ranges, make_config, suite_is_complete

__all__ = ["MANIFEST", "SuiteConfig", "build_suite", "identity_ranges", "make_config", "suite_is_complete"]
