"""Run by A1111 at every start. RIVAL needs nothing beyond what A1111 ships (torch, numpy, pillow,
gradio), so nothing is installed; this only warns early about a torch older than RIVAL supports."""

import importlib.metadata

try:
    major, minor = (int(part) for part in importlib.metadata.version("torch").split(".")[:2])
    if (major, minor) < (2, 1):
        print(f"sd-webui-rival needs torch >= 2.1 (found {major}.{minor}); it is untested there and may fail.")
except importlib.metadata.PackageNotFoundError:
    pass
