"""The ``tiny`` stand-in's one-off pretraining and its measurements (not LaViC's stages).

LaViC assumes a pretrained, instruction-following VLM; on a CPU the offline ``tiny`` backbone
stands in for it, and what it needs of such a model is given to it here, once:

- :mod:`~lavic.pretrain.vision`: the vision side (tower, projector, image newline) learns to make
  the frozen language model describe the image;
- :mod:`~lavic.pretrain.instruct`: the language model learns to pick a candidate from text;
- :mod:`~lavic.pretrain.measure`: what the shipped weights measure;
- :mod:`~lavic.pretrain.build`: the ``lavic build-tiny`` command.

The results are shipped under ``lavic/assets/tiny/`` and loaded by :mod:`lavic.model.tiny`.
"""
