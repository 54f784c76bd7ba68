"""facefuse: feature-fusion face recognition with a Variational Information Bottleneck.

The library behind the ``platform.*`` commands. Everything Ray ships to workers lives here.
"""

__version__ = "0.1.0"
