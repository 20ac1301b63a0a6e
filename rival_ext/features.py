"""Old name of ``rival_ext.feature_cache``: the same module, so that imports from before the rename keep working."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module(".feature_cache", __package__)
