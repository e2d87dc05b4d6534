"""The test suite's warning filters (pyproject.toml): library deprecations are errors, and the
commented exceptions are as narrow as they say."""

from __future__ import annotations

import warnings

import pytest


def _warn_from(module: str, category: type[Warning], message: str) -> None:
    # As if `module` had called warnings.warn: filters match the attributed module.
    warnings.warn_explicit(message, category, f"{module.replace('.', '/')}.py", 1, module=module)


@pytest.mark.parametrize(
    "module",
    [
        "transformers.modeling_utils",
        "peft.peft_model",
        "lightning.pytorch.trainer.trainer",
        "lightning_fabric.utilities",
        "lavic.model.backbone",
    ],
)
@pytest.mark.parametrize("category", [DeprecationWarning, FutureWarning])
def test_a_library_deprecation_is_an_error(module, category):
    with pytest.raises(category):
        _warn_from(module, category, "`old_api` is deprecated and will be removed in v99")


def test_the_exceptions_match_only_their_own_message():
    # peft's read of transformers' deprecated alias, and lightning's LeafSpec(): not errors...
    with warnings.catch_warnings(record=True):
        _warn_from(
            "transformers.modeling_utils",
            FutureWarning,
            "`is_gradient_checkpointing` is deprecated and will be removed in v6.",
        )
        _warn_from(
            "lightning.pytorch.utilities._pytree",
            FutureWarning,
            "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)`",
        )
    # ...but another deprecation from the same module still is.
    with pytest.raises(FutureWarning):
        _warn_from("lightning.pytorch.utilities._pytree", FutureWarning, "`other` is deprecated")
