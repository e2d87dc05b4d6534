"""The training core shared by the LoRA stages (distill, tune): precision, the Trainer and its
checkpoints, resume, the sampler, LoRA wrapping and the LightningModule base.

Submodules are imported where needed (``lavic.training.precision`` needs only torch, so
inference code may use it without importing Lightning).
"""
