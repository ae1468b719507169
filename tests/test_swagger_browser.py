"""Swagger UI works offline: in a real browser that may reach nothing but the API, `/swagger`
renders the document, takes an API key through Authorize, and runs a call with it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Browser, Route, expect

from tests.cluster_api_helpers import FreshApi, fresh_api
from tests.fixtures.browser import chromium
from tests.fixtures.loopback import serve_on_loopback


@pytest.fixture
async def served(fresh_database_url: str, redis_url: str) -> AsyncIterator[tuple[FreshApi, int]]:
    async with (
        fresh_api(fresh_database_url, redis_url) as api,
        serve_on_loopback(api.app, lifespan="off") as port,
    ):
        yield api, port


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


async def test_swagger_runs_a_call_with_every_other_host_blocked(
    served: tuple[FreshApi, int], browser: Browser
) -> None:
    api, port = served
    origin = f"127.0.0.1:{port}"
    blocked: list[str] = []

    async def only_the_api(route: Route) -> None:
        if urlsplit(route.request.url).netloc == origin:
            await route.continue_()
        else:
            blocked.append(route.request.url)
            await route.abort()

    context = await browser.new_context()
    try:
        await context.route("**/*", only_the_api)
        page = await context.new_page()
        await page.goto(f"http://{origin}/swagger")
        await expect(page.locator(".swagger-ui .info .title")).to_contain_text("Spool")

        await page.click(".swagger-ui .auth-wrapper .authorize")
        dialog = page.locator(".swagger-ui .modal-ux")
        await dialog.locator("input[type=text]").first.fill(api.key)
        await dialog.locator("button.authorize").first.click()
        await dialog.locator("button.btn-done").first.click()

        operation = page.locator(".opblock-get", has=page.locator("[data-path='/usage']"))
        await operation.locator(".opblock-summary").click()
        await operation.locator("button.try-out__btn").click()
        await operation.locator("button.execute").click()
        status = operation.locator(".live-responses-table tbody .response-col_status").first
        await expect(status).to_have_text("200", timeout=15_000)
        await expect(operation.locator(".live-responses-table")).to_contain_text("jobs_created")
    finally:
        await context.close()
    assert blocked == [], f"the page reached for other hosts: {blocked}"
