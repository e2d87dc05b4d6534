"""Item visual tokens: an image -> 5 views -> the vision tower's [CLS] per view -> the projector.

Shapes: N items, V = 5 views, C x H x W pixels, Dv vision width, D language-model width.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image

from lavic.constants import NUM_ITEM_TOKENS
from lavic.errors import LavicError
from lavic.model.backbone import unwrap


def pixel_views(image_processor, images: Sequence[Image.Image]) -> torch.Tensor:
    """Process images into exactly five views each: ``(N, 5, C, H, W)``.

    LLaVA-NeXT's anyres gives the base view plus one view per grid crop (2 to 4 for
    LLaVA-v1.6's pinpoints); an image with fewer than five views is padded with zero views,
    independently of the other images in the batch, so an item's tokens never depend on
    which items it was encoded with.
    """
    if not images:
        raise ValueError("pixel_views needs at least one image")
    views = []
    for image in images:
        pv = image_processor([image], return_tensors="pt")["pixel_values"][0]  # (v, C, H, W)
        if pv.shape[0] > NUM_ITEM_TOKENS:
            raise LavicError(
                f"the image processor makes {pv.shape[0]} views per image; LaViC uses "
                f"{NUM_ITEM_TOKENS} (base + up to 4 crops): use grid pinpoints of at most 2x2"
            )
        pad = pv.new_zeros((NUM_ITEM_TOKENS - pv.shape[0], *pv.shape[1:]))
        views.append(torch.cat([pv, pad], dim=0))
    return torch.stack(views)  # (N, 5, C, H, W)


def encode_item_tokens(llava, pixel_values: torch.Tensor) -> torch.Tensor:
    """The five visual tokens of each item, in the language model's embedding space.

    Args:
        llava: a ``LlavaNextForConditionalGeneration`` (LoRA layers inside are used as is).
        pixel_values: ``(N, 5, C, H, W)`` from :func:`pixel_views`.

    Returns:
        ``(N, 5, D)``: the projector applied to the vision tower's last-layer [CLS] state of
        each view (the reference's choice of layer).
    """
    core = llava.model
    n, v = pixel_values.shape[:2]
    tower = core.vision_tower
    dtype = next(tower.parameters()).dtype
    flat = pixel_values.reshape(n * v, *pixel_values.shape[2:]).to(dtype)  # (N*5, C, H, W)
    cls = tower(flat).last_hidden_state[:, 0]  # (N*5, Dv)
    return core.multi_modal_projector(cls).reshape(n, v, -1)  # (N, 5, D)


def make_item_encoder(backbone) -> Callable[[list[Image.Image]], torch.Tensor]:
    """The item encoder: images -> ``(N, 5, D)`` tokens with ``backbone``'s vision tower and
    projector, without gradients and without dropout (an item's tokens are a function of its
    image). The one way items are encoded: the token cache and the evaluator's in-memory
    tokens both call it."""
    llava = unwrap(backbone.model)
    core = llava.model
    device = next(core.vision_tower.parameters()).device

    def encoder(images: list[Image.Image]) -> torch.Tensor:
        pixels = pixel_views(backbone.image_processor, images).to(device)  # (N, 5, C, H, W)
        modules = (core.vision_tower, core.multi_modal_projector)
        modes = [m.training for m in modules]
        try:
            for m in modules:
                m.eval()
            with torch.no_grad():
                return encode_item_tokens(llava, pixels)
        finally:
            for m, mode in zip(modules, modes, strict=True):
                m.train(mode)

    return encoder


def encoder_dtype(backbone) -> torch.dtype:
    """The dtype :func:`make_item_encoder`'s tokens come in (the projector's weights')."""
    return next(unwrap(backbone.model).model.multi_modal_projector.parameters()).dtype


def insert_item_tokens(
    inputs_embeds: torch.Tensor,
    input_ids: torch.Tensor,
    item_token_ids: Sequence[int],
    item_embeds: torch.Tensor,
) -> torch.Tensor:
    """Replace every run of the five placeholder tokens by one item's visual tokens.

    One vectorised ``masked_scatter``; the placeholders are filled in reading order (row by
    row, left to right), so ``item_embeds`` lists the items of row 0 first, then row 1, ...

    Args:
        inputs_embeds: ``(B, T, D)`` text embeddings.
        input_ids: ``(B, T)``.
        item_token_ids: the ids of ``<ItemImageEmb1>`` .. ``<ItemImageEmb5>``.
        item_embeds: ``(M, 5, D)`` for the M items placed in the batch, in reading order.

    Raises:
        LavicError: if the placeholders are not exactly ``M`` complete runs of the five tokens
            in order (a truncated prompt, a stray token): never silently clipped.
    """
    ids = torch.as_tensor(list(item_token_ids), device=input_ids.device)
    mask = torch.isin(input_ids, ids)  # (B, T)
    found = int(mask.sum())
    expected = item_embeds.shape[0] * item_embeds.shape[1]
    if found != expected:
        raise LavicError(
            f"the prompt holds {found} item-token placeholders but {item_embeds.shape[0]} items "
            f"x {item_embeds.shape[1]} tokens = {expected} visual tokens were given"
        )
    if found and not torch.equal(input_ids[mask], ids.repeat(item_embeds.shape[0])):
        raise LavicError("item-token placeholders are not complete runs of <ItemImageEmb1..5>")
    source = item_embeds.reshape(-1, item_embeds.shape[-1]).to(inputs_embeds.dtype)
    return inputs_embeds.masked_scatter(mask.unsqueeze(-1), source)
