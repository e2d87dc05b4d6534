"""The item visual-token cache: each item's five tokens, computed once per image and adapter.

Stage 2 freezes the vision tower and the projector, so an item's tokens depend only on its
image and on the stage-1 adapter. They are computed once (``lavic encode``, or on demand by
``lavic tune`` / ``evaluate`` / ``serve``) and read back from safetensors shards; the vision
tower never runs inside a tuning or inference step.
"""

from lavic.cache.store import (
    EnsureReport,
    ItemTokenCache,
    adapter_fingerprint,
    build_item_token_cache,
)

__all__ = ["EnsureReport", "ItemTokenCache", "adapter_fingerprint", "build_item_token_cache"]
