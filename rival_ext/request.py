"""What one generation asked of RIVAL (parsed from the panel, the API or an X/Y/Z cell by the WebUI layer)."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from .params import RivalParams

MAX_MORE_REFERENCES = 3


@dataclass(frozen=True)
class ExtraReference:
    """A further reference: its image, its weight (-1 .. 1; 0: absent), the part of it RIVAL reads (mask)."""

    image: Image.Image
    weight: float = 1.0
    mask: Image.Image | None = None


@dataclass(frozen=True)
class RivalRequest:
    """The panel's values for one generation, validated."""

    enabled: bool = False
    reference_image: Image.Image | None = None
    use_init_image: bool = False
    preset: str = "variation"
    params: RivalParams = field(default_factory=RivalParams)
    apply_to_hires: bool = False
    show_reconstruction: bool = False
    official_settings: bool = False
    more_references: tuple[ExtraReference, ...] = ()
    mask: Image.Image | None = None  # where in the generated image RIVAL acts (white: RIVAL)
    reference_mask: Image.Image | None = None  # which part of the (first) reference RIVAL reads


class RivalInputError(ValueError):
    """Bad panel or API input: the WebUI's API answers 422 with the message as ``detail``.

    A1111's ``handle_exception`` reads ``vars(e)``, so the status must be an instance attribute.
    """

    def __init__(self, message: str) -> None:
        super().__init__(f"RIVAL: {message}")
        self.status_code = 422
        self.detail = str(self)


class RivalRuntimeError(RuntimeError):
    """RIVAL could not run this generation (out of memory, NaN, a bypassed injection, ...): HTTP 500."""
