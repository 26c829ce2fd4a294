"""R4 integers written as text: URL parameters, path segments and ETags.

R4's integer is a 32-bit signed number written in ASCII digits. ``str.isdigit`` and ``int``
accept more (``"²"``, ``"٣"``, any length), and a value past 2^31 - 1 overflows the database's
``INTEGER`` columns: both must be refused where the text arrives, not fail later.
"""

from __future__ import annotations

import re
from typing import Any, Final

INTEGER_MAX: Final = 2**31 - 1
_DIGITS = re.compile(r"[0-9]{1,10}")


def unsigned_int(text: Any) -> int | None:
    """``text`` as an R4 unsignedInt (ASCII digits, 0 to 2^31 - 1), or None if it is not one."""
    if not isinstance(text, str) or not _DIGITS.fullmatch(text):
        return None
    value = int(text)
    return value if value <= INTEGER_MAX else None
