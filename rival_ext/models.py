"""Old name of ``rival_ext.eps_models``: the same module, so that imports from before the rename keep working."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module(".eps_models", __package__)
