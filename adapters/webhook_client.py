"""Sending a webhook: one signed POST, through the same SSRF guard as downloads, no redirects."""

from __future__ import annotations

import time
import uuid

import httpx

from spool.adapters.guarded_http import guarded_client
from spool.adapters.ssrf import UrlGuard, UrlRefused
from spool.domain import webhook


class WebhookAnswer:
    """What the receiver said, or why nothing was said."""

    def __init__(self, status_code: int | None, reason: str, seconds: float) -> None:
        self.status_code = status_code
        self.reason = reason
        self.seconds = seconds

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


async def post(
    url: str, body: bytes, *, secret: str, kind: str, guard: UrlGuard, timeout: float = 10.0
) -> tuple[WebhookAnswer, bool]:
    """POST `body` to `url`; returns the answer and whether a retry could help."""
    started = time.monotonic()
    try:
        await guard.check_url_async(url)
    except UrlRefused as exc:
        return WebhookAnswer(None, str(exc), 0.0), False
    now = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Spool-Webhook/1",
        webhook.EVENT_HEADER: kind,
        webhook.DELIVERY_HEADER: str(uuid.uuid4()),
        webhook.TIMESTAMP_HEADER: str(now),
        webhook.SIGNATURE_HEADER: webhook.sign(secret, now, body),
    }
    try:
        async with guarded_client(guard, timeout=timeout) as client:
            answer = await client.post(url, content=body, headers=headers)
    except UrlRefused as exc:  # the name resolved elsewhere when connecting (DNS rebinding)
        return WebhookAnswer(None, str(exc), time.monotonic() - started), False
    except httpx.HTTPError as exc:
        return WebhookAnswer(None, f"{type(exc).__name__}: {exc}", time.monotonic() - started), True
    elapsed = time.monotonic() - started
    if 200 <= answer.status_code < 300:
        return WebhookAnswer(answer.status_code, "OK", elapsed), False
    reason = f"receiver answered HTTP {answer.status_code}"
    if 300 <= answer.status_code < 400:
        # Following it would send the signed body to wherever the receiver points (past the
        # URL the account gave), and a 303 would turn the POST into a GET: never delivered.
        reason += ", a redirect: webhooks do not follow redirects, so set the final URL"
    # A redirect, or a 4xx other than timeouts / rate limits: the same URL would answer the
    # same to a retry, so the delivery fails for good.
    retry = answer.status_code >= 500 or answer.status_code in (408, 409, 425, 429)
    return WebhookAnswer(answer.status_code, reason, elapsed), retry
