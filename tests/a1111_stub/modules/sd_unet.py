"""No replacement UNet (TensorRT etc.) is ever active in the stub."""

current_unet = None
