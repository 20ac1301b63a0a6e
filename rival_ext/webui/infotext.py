"""RIVAL's entries in the generation parameters (infotext), written from the field table."""

from __future__ import annotations

from ..request import RivalRequest
from .fields import REFERENCE_KEY, TABLE


def generation_params(args: RivalRequest, image_hash: str) -> dict[str, object]:
    """Infotext entries for a generation; the reference is recorded by a short hash only."""
    out: dict[str, object] = {}
    for f in TABLE:
        if f.write is None or f.key is None:  # not written (a written field has its key)
            continue
        value = f.write(args)
        if value is not None:
            out[f.key] = value
    out[REFERENCE_KEY] = image_hash
    return out
