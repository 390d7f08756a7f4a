"""What the server adds to the Ray Dashboard build's index.html when it serves a session (server/ui.py): a
banner before the UI's root element and a per-session title. Taken off, the page must be the build's own."""

from __future__ import annotations

import re


def without_additions(page: bytes) -> bytes:
    banner = page[page.index(b"<!-- rayhistory:"):page.index(b'<div id="root">')]
    return re.sub(rb"<title>[^<]*</title>", b"<title>Ray Dashboard</title>", page.replace(banner, b""))
