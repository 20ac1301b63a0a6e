"""Old name of ``rival_ext.reference_rows``: the same module, so that imports from before the rename keep working."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module(".reference_rows", __package__)
