"""Backbone loading, item visual tokens, their insertion into the prompt, LoRA targeting."""
