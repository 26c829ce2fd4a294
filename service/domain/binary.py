"""Binary content carried as text: FHIR's base64Binary (attachments, signed forms)."""

from __future__ import annotations

import base64
import binascii


def is_base64(text: str) -> bool:
    """R4 base64Binary: the base64 alphabet in groups of four (``=`` padding), whitespace
    allowed between. Python's decoder, like pydantic's, otherwise skips characters outside the
    alphabet, so that "%%%" would pass as empty content."""
    try:
        base64.b64decode("".join(text.split()), validate=True)
    except binascii.Error:
        return False
    return True
