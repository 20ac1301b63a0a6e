"""Old name of ``infotext_utils``: A1111 1.10.1 has no such file, it aliases the name in sys.modules when
infotext_utils is imported (always, at startup). Importing this file does the same."""

import sys

from modules import infotext_utils

sys.modules[__name__] = infotext_utils
