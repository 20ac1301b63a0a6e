"""Stand-in for Forge's ``backend`` package (lllyasviel/stable-diffusion-webui-forge main, dfdcbab6, "Forge2")."""
