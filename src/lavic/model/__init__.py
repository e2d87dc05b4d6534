"""Backbone loading, item visual tokens and their insertion, LoRA targeting, the shared
forwards and loss (compute), decoding, and loading a model for inference.

Importing the package registers every backbone family (``lavic.model.backbone.BACKBONES``):
``llava-next`` (llava_next.py, the default for any unregistered name: a Hub id or a local
checkpoint), ``tiny-random`` (tiny_random.py) and ``tiny`` (tiny.py).
"""

from lavic.model import backbone, llava_next, tiny, tiny_random  # noqa: F401  (they register)
