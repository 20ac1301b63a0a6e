"""Modules renamed after their job still import under their old names (other branches use them)."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize(
    ("old", "new"),
    [("batching", "reference_rows"), ("features", "feature_cache"), ("cache", "chain_cache"), ("models", "eps_models")],
)
def test_the_old_name_is_the_renamed_module(old, new) -> None:
    assert importlib.import_module(f"rival_ext.{old}") is importlib.import_module(f"rival_ext.{new}")
