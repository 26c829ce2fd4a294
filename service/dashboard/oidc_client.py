"""Authlib's Starlette OAuth client, imported without its httpx deprecation warning.

Authlib 1.9 warns at import time when it falls back from the ``httpx2`` fork to ``httpx``
(which this project uses, as Authlib still supports); printed, the warning lands on the
server's stderr, where only JSON log lines belong.
"""

from __future__ import annotations

import warnings

from authlib.deprecate import AuthlibDeprecationWarning

with warnings.catch_warnings():
    warnings.simplefilter("ignore", AuthlibDeprecationWarning)
    from authlib.integrations.starlette_client import OAuth, OAuthError

__all__ = ["OAuth", "OAuthError"]
