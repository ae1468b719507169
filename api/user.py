"""The caller's own settings that are not storage: the webhook signing secret."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, get
from litestar.di import Provide

from adapters.settings import Settings
from api.auth import Principal, job_api_principal
from api.errors import JOB_API_ERRORS
from domain import webhook


class WebhookSecret(msgspec.Struct):
    """How to check that a webhook came from this Spool."""

    secret: str
    signature_header: str
    timestamp_header: str
    algorithm: str
    signed_content: str


class UserController(Controller):
    path = "/user"
    dependencies = {"principal": Provide(job_api_principal)}
    exception_handlers = JOB_API_ERRORS  # type: ignore[assignment]
    tags = ["user"]

    @get("/webhook")
    async def webhook_secret(
        self, request: Request[Any, Any, Any], principal: Principal
    ) -> WebhookSecret:
        """The secret your webhooks are signed with, and how the signature is made."""
        settings: Settings = request.app.state.settings
        return WebhookSecret(
            secret=webhook.account_secret(settings.resolved_secret_key(), principal.account_id),
            signature_header=webhook.SIGNATURE_HEADER,
            timestamp_header=webhook.TIMESTAMP_HEADER,
            algorithm="HMAC-SHA256, hex, prefixed sha256=",
            signed_content="<timestamp header value>.<raw request body>",
        )
