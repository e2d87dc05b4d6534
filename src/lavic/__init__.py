"""LaViC: visually-aware conversational recommendation with 5 visual tokens per item."""

__version__ = "0.1.0"
