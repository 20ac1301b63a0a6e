"""CPU/float32 view of A1111's ``modules.devices``: every cast is the identity, autocast is a null context."""

import contextlib

import torch

cpu: torch.device = torch.device("cpu")
device: torch.device = cpu
dtype: torch.dtype = torch.float32
dtype_vae: torch.dtype = torch.float32
dtype_unet: torch.dtype = torch.float32
dtype_inference: torch.dtype = torch.float32
unet_needs_upcast = False
fp8 = False
force_fp16 = False


class NansException(Exception):
    pass


def autocast(disable=False):
    """A1111 returns a null context whenever dtype is float32, which is always the case here."""
    return contextlib.nullcontext()


def without_autocast(disable=False):
    return contextlib.nullcontext()


def torch_gc() -> None:
    pass


def cond_cast_unet(input):
    return input.to(dtype_unet) if unet_needs_upcast else input


def cond_cast_float(input):
    return input.float() if unet_needs_upcast else input


def test_for_nans(x, where) -> None:
    if not torch.isnan(x).all():
        return
    raise NansException(f"A tensor with NaNs was produced in {where}.")
