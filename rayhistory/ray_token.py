"""Ray's own token authentication (Ray 2.60, RAY_AUTH_MODE=token): the token anything calling a head's dashboard sends.

Where the token comes from, first found wins: the part's own setting (`--ray-auth-token`), its token file
(`--ray-auth-token-path`, read on every use: a rotated Secret is picked up), then Ray's own variables in the
process environment (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH), as a Ray container that KubeRay set up has them.
It goes out as `X-Ray-Authorization: Bearer <token>`, the header Ray's dashboard reads for proxies and
KubeRay (it never displaces a caller's own Authorization header).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

HEADER = "X-Ray-Authorization"
_TOKEN = re.compile(r"[\x21-\x7e]{1,8192}")


class RayTokenError(ValueError):
    pass


def resolve_token(token: str = "", token_path: str = "", environ: Mapping[str, str] | None = None) -> str | None:
    """The Ray token to send, or None when there is none (a head without token auth needs none)."""
    environ = os.environ if environ is None else environ
    for value, path in ((token, token_path), (environ.get("RAY_AUTH_TOKEN", ""), environ.get("RAY_AUTH_TOKEN_PATH", ""))):
        if value:
            return _checked(value.strip())
        if path:
            try:
                return _checked(Path(path).read_text().strip())
            except OSError as exc:
                raise RayTokenError(f"cannot read the Ray token file {path}: {exc.strerror}") from None
    return None


def _checked(token: str) -> str:
    if _TOKEN.fullmatch(token) is None:
        raise RayTokenError("the Ray token must be printable ASCII, at most 8 KiB")
    return token


def headers(token: str | None) -> dict[str, str]:
    return {HEADER: f"Bearer {token}"} if token else {}
