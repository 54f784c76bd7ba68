"""Synthetic face benchmark written in the real formats (the embedded default's data).

``build_suite(out, seed=0, **size_knobs)`` draws procedural faces (identity = geometry, colours,
texture; image = pose, expression, lighting, occlusion, background) and writes a RecordIO train
set, five .bin verification sets and two IJB-style sets through facefuse.data's writers;
``suite_is_complete(out, seed=0, **size_knobs)`` says whether that exact suite is already there.
``build_ladder`` / ``ladder_is_complete`` do the same for the optional quality ladder
(``synth_q0`` .. ``synth_q4``: the same pairs at graded degradation and pose).
"""

from facefuse.synth.ladder import LADDER_MANIFEST, build_ladder, ladder_is_complete, ladder_levels
from facefuse.synth.suite import MANIFEST, SuiteConfig, build_suite, identity_ranges, make_config, suite_is_complete

__all__ = ["LADDER_MANIFEST", "MANIFEST", "SuiteConfig", "build_ladder", "build_suite", "identity_ranges",
           "ladder_is_complete", "ladder_levels", "make_config", "suite_is_complete"]
