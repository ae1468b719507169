"""File and folder names through the job API: refused with a 400 naming the field and what is
not allowed, on every surface that takes one (create, bulk, rename); stored names stay readable.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import httpx
import msgspec
import pytest

from spool.adapters.event_store import EventStore
from spool.adapters.key_store import issue
from spool.domain import job
from spool.domain.events import NewEvent
from spool.domain.file_names import check_filename
from spool.reactors.projection import ProjectionRunner
from spool.reactors.stages import output_names

URL = "http://media.test/a.mp4"
FORBIDDEN = '(a name must not contain any of \\ / : * ? " < > |)'


def _auth(key: str) -> dict[str, str]:
    return {"x-api-key": key}


async def _events(store: EventStore) -> int:
    count: int = await store.pool.fetchval("SELECT count(*) FROM events")
    return count


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"filename": "Episode 1: The Start"}, f"Invalid filename: ':' is not allowed {FORBIDDEN}"),
        ({"filename": "why?"}, f"Invalid filename: '?' is not allowed {FORBIDDEN}"),
        ({"filename": "a|b"}, f"Invalid filename: '|' is not allowed {FORBIDDEN}"),
        (
            {"filename": "final."},
            "Invalid filename: 'final.' ends with a dot, which Windows drops",
        ),
        (
            {"filename": "final "},
            "Invalid filename: 'final ' ends with a space, which Windows drops",
        ),
        (
            {"filename": "nul.mp4"},
            "Invalid filename: 'nul' is a device name on Windows, not allowed as a name with or "
            "without an extension",
        ),
        (
            {"folder": "shows/Lpt3/s1"},
            "Invalid folder: 'Lpt3' is a device name on Windows, not allowed as a name with or "
            "without an extension",
        ),
        ({"folder": "shows/../other"}, "Invalid folder: must not contain '..'"),
        ({"folder": "a<b"}, f"Invalid folder: '<' is not allowed {FORBIDDEN}"),
        ({"folder": "bell\x07"}, "Invalid folder: control character U+0007 is not allowed"),
    ],
)
async def test_a_name_some_file_system_refuses_gets_a_400_naming_field_and_reason(
    client: httpx.AsyncClient, api_key: str, store: EventStore, fields: dict[str, str], error: str
) -> None:
    before = await _events(store)

    answer = await client.post("/jobs", json={"url": URL, **fields}, headers=_auth(api_key))

    assert answer.status_code == 400
    assert answer.json() == {"error": error}
    assert await _events(store) == before


async def test_a_bulk_item_with_an_unsafe_name_refuses_the_whole_request(
    client: httpx.AsyncClient, api_key: str, store: EventStore
) -> None:
    before = await _events(store)

    answer = await client.post(
        "/jobs/bulk",
        json={"jobs": [{"url": URL, "filename": "fine"}, {"url": URL, "filename": "CON"}]},
        headers=_auth(api_key),
    )

    assert answer.status_code == 400
    assert answer.json() == {
        "error": "jobs[1]: Invalid filename: 'CON' is a device name on Windows, not allowed as "
        "a name with or without an extension"
    }
    assert await _events(store) == before


async def test_a_rename_to_an_unsafe_name_is_refused_and_the_job_keeps_its_name(
    client: httpx.AsyncClient, api_key: str
) -> None:
    created = await client.post(
        "/jobs/bulk",
        json={"jobs": [{"url": URL, "filename": "one"}, {"url": URL}], "paused": True},
        headers=_auth(api_key),
    )
    assert created.status_code == 201, created.text
    batch_id = created.json()["batch_id"]
    first, second = created.json()["job_ids"]

    renamed = await client.patch(
        f"/batch/{batch_id}/jobs",
        json={
            "renames": [
                {"job_id": first, "filename": "one: the return"},
                {"job_id": second, "filename": "two"},
            ]
        },
        headers=_auth(api_key),
    )

    assert renamed.status_code == 200
    assert renamed.json() == {
        "updated": 1,
        "errors": [{"job_id": first, "error": f"Invalid filename: ':' is not allowed {FORBIDDEN}"}],
    }
    names = [
        (await client.get(f"/jobs/{j}", headers=_auth(api_key))).json()["filename"]
        for j in (first, second)
    ]
    assert names == ["one", "two"]


async def test_a_job_stored_before_the_rules_still_reads_with_its_name(
    client: httpx.AsyncClient, store: EventStore, runner: ProjectionRunner
) -> None:
    issued = await issue(store, name=f"old-{uuid.uuid4().hex[:6]}", admin=False)
    await runner.wait_until("api_keys", issued.at)
    job_id = str(uuid.uuid4())
    # Accepted (and stored) before names were held to every file system's rules.
    options = job.JobOptions(filename="Episode 1: The Start", folder="con/a")
    events = job.create(job_id=job_id, account_id=issued.account_id, url=URL, options=options)
    await store.append(job.stream_id(job_id), [NewEvent(e) for e in events], 0)

    answer = await client.get(f"/jobs/{job_id}", headers=_auth(issued.key))

    assert answer.status_code == 200
    assert (answer.json()["filename"], answer.json()["folder"]) == ("Episode 1: The Start", "con/a")


@pytest.mark.parametrize(
    ("title", "first_name"),
    [
        ("Nul.mp4", "_Nul.mp4 [{short}].mp4"),
        ("con", "_con [{short}].mp4"),
        ("Pilot: part 1?", "Pilot_ part 1 [{short}].mp4"),
    ],
)
def test_a_name_made_from_a_title_is_safe_on_windows_too(title: str, first_name: str) -> None:
    job_id = str(uuid.uuid4())
    [created] = job.create(job_id=job_id, account_id="a", url=URL, options=job.JobOptions())
    state = job.evolve(None, created, datetime.now(UTC), 1)
    state = msgspec.structs.replace(state, title=title)

    names = output_names(state)

    assert names[0] == first_name.format(short=job_id.split("-")[0])
    for name in names:
        check_filename(name.rsplit(".", 1)[0])  # refuses nothing a title made


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"folder_prefix": "media:2024"}, f"Invalid folder_prefix: ':' is not allowed {FORBIDDEN}"),
        (
            {"folder_prefix": "media", "base_folder": "shows/aux"},
            "Invalid base_folder: 'aux' is a device name on Windows, not allowed as a name with "
            "or without an extension",
        ),
    ],
)
async def test_a_storage_folder_prefix_follows_the_same_rules(
    client: httpx.AsyncClient, api_key: str, fields: dict[str, str], error: str
) -> None:
    body = {"bucket": "user-media", "access_key": "AKIAEXAMPLE", "secret_key": "s", **fields}

    answer = await client.post("/user/s3", json=body, headers=_auth(api_key))

    assert answer.status_code == 400
    assert answer.json() == {"error": error}
    shown = await client.get("/user/storage", headers=_auth(api_key))
    assert shown.json()["default"] is True
