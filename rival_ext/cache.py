"""Old name of ``rival_ext.chain_cache``: the same module, so that imports from before the rename keep working."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module(".chain_cache", __package__)
