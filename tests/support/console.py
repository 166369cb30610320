"""Console test helpers: the shared test password and the CSRF token read from a page."""
from __future__ import annotations

import re

PASSWORD = "correct horse battery"


def csrf(html: str) -> str:
    """The CSRF token of the first form on ``html`` (what a browser would post back)."""
    return re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html).group(1)
