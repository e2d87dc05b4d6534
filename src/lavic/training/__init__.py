"""The training core shared by the LoRA stages (distill, tune): the Trainer and its
checkpoints, resume, the sampler, LoRA wrapping and the LightningModule base.

Submodules are imported where needed. The choice of precision lives below both this package
and ``lavic.model`` (``lavic.precision``, torch only), since inference uses it too.
"""
