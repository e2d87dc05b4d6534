"""Backbone loading, item visual tokens and their insertion, LoRA targeting, the shared
forward/loss (compute) and loading a model for inference.

Importing the package registers every backbone known by name (``lavic.model.backbone.BACKBONES``):
``tiny-random`` (backbone.py) and ``tiny`` (tiny.py); any other name is a LLaVA-NeXT checkpoint.
"""

from lavic.model import backbone, tiny  # noqa: F401  (tiny registers itself on import)
