"""Objects a job wrote, held to what it recorded: a job deletes only what is still its own.

A key alone does not say whose object lies there: after a job's delete, another job may have
written the same key, or someone may have replaced the object behind Spool's back. So every
delete first asks the storage (HEAD) whether the object at each key is still the one recorded
(`domain.job.StoredFile`: size, ETag, version, owner) and removes nothing when one is not.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from spool.adapters.storage import ObjectChanged, ObjectStorage, is_same_object
from spool.domain.job import StoredFile

log = logging.getLogger(__name__)


async def changed_objects(
    storage: ObjectStorage, objects: Sequence[StoredFile], owner: str
) -> list[str]:
    """The keys among `objects` whose object is gone or is no longer the one `owner` wrote.

    `StorageError` propagates: an unanswered HEAD proves nothing either way.
    """
    changed = []
    for stored in objects:
        info = await storage.head(stored.key)
        if not is_same_object(
            info,
            size=stored.size,
            etag=stored.etag,
            version_id=stored.version_id,
            owner=owner,
        ):
            changed.append(stored.key)
    return changed


async def delete_owned(
    storage: ObjectStorage, objects: Sequence[StoredFile], owner: str
) -> list[str]:
    """Delete those of `objects` that are still as `owner` wrote them; the keys left alone.

    For clean-ups (a cancelled or failed upload), which must never take someone else's object
    with them. What is left alone is logged, by key only.
    """
    changed = set(await changed_objects(storage, objects, owner))
    for stored in objects:
        if stored.key not in changed:
            try:
                await storage.delete(stored.key, if_etag=stored.etag)
            except ObjectChanged:
                changed.add(stored.key)  # replaced between the HEAD and the delete
        if stored.key in changed:
            log.warning("left %s alone: it is not the object job %s wrote", stored.key, owner)
    return sorted(changed)


async def delete_all_owned(
    storage: ObjectStorage, objects: Sequence[StoredFile], owner: str
) -> tuple[list[str], list[str]]:
    """Delete `objects` if every one is still as `owner` wrote it: `(changed, deleted)`.

    When a HEAD finds one replaced or gone, `changed` names them and nothing is deleted. Each
    delete is also conditional on the recorded ETag where the storage can do that, so an object
    replaced between the check and its delete stays: then it is `changed`, and `deleted` says
    which went before it.
    """
    changed = await changed_objects(storage, objects, owner)
    if changed:
        return changed, []
    deleted: list[str] = []
    for stored in objects:
        try:
            await storage.delete(stored.key, if_etag=stored.etag)
        except ObjectChanged:
            return [stored.key], deleted
        deleted.append(stored.key)
    return [], deleted
