"""Backbone loading, item visual tokens and their insertion, LoRA targeting, the shared
forward/loss (compute) and loading a model for inference."""
