"""Ask the history server to pre-warm a session: build and store its compacted snapshot now, so the
first user to open a deleted cluster's history does not wait for the raw events to be parsed."""

from __future__ import annotations

import logging

import aiohttp

from rayhistory.layout import SessionRef

log = logging.getLogger(__name__)


async def prewarm(base_url: str, token: str, refs: list[SessionRef], timeout: float) -> dict[str, int | str]:
    """POST /internal/prewarm once per session; returns session -> HTTP status (or the error).

    Best effort: the sessions are already recorded dead, and the server builds a snapshot on first
    access anyway, so a failure is logged and never holds a deletion.
    """
    results: dict[str, int | str] = {}
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = base_url.rstrip("/") + "/internal/prewarm"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout), headers=headers) as http:
        for ref in refs:
            payload = {"namespace": ref.namespace, "cluster": ref.cluster, "session": ref.session}
            try:
                async with http.post(url, json=payload) as resp:
                    results[ref.session] = resp.status
                    if resp.status not in (200, 202):
                        log.warning("pre-warm refused", extra={"url": url, "session": ref.tail, "status": resp.status,
                                                               "body": (await resp.text())[:200]})
            except (aiohttp.ClientError, TimeoutError) as exc:
                results[ref.session] = f"{type(exc).__name__}: {exc}"
                log.warning("pre-warm failed", extra={"url": url, "session": ref.tail, "error": results[ref.session]})
    return results
