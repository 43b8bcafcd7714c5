"""URLs as they may be shown: a password in a repository URL must never reach an error, a log or koji."""

from __future__ import annotations

import re

# scheme://userinfo@ -- matched on the text, so even a URL urlsplit() rejects is redacted.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#@]*)@")


def redact(text: str) -> str:
    """`text` with the user information of every URL in it replaced by '***'."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}***@", text)
