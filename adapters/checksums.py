"""SHA-256 of an upload, computed as its bytes are read, and checked against the storage's own.

Every storage hashes what it sends (`Sha256.add`, `add_part`), in the chunks it reads anyway: no
second read of the file. S3 is sent the SHA-256 of each request body (`ChecksumSHA256`), refuses
a body that does not match it (`BadDigest`), and answers the checksum of what it stored: the
object's for a single PUT, each part's for a multipart upload, and for the whole multipart object
a *composite*
(the SHA-256 of the parts' digests, `<base64>-<parts>`), not the object's own SHA-256. So a
multipart object counts as checked when S3 confirmed every part and, where it answers one, the
composite of those parts; the object's own SHA-256 is ours, from the same bytes. A storage that
answers no checksum (a folder, Azure Blob, an S3-compatible store without them) leaves the
upload unchecked, and `checked` says so.
"""

from __future__ import annotations

import base64
import hashlib


def b64(digest: bytes) -> str:
    """A digest as S3's checksum headers carry it."""
    return base64.b64encode(digest).decode()


class Sha256:
    """The SHA-256 of an upload's bytes, and what the storage confirmed of them."""

    def __init__(self) -> None:
        self._whole = hashlib.sha256()
        self._parts: list[bytes] = []
        self._answered = 0
        self._refuted = False

    def add(self, chunk: bytes) -> None:
        """Hash the next chunk read, where the storage takes no checksum of its own."""
        self._whole.update(chunk)

    def add_part(self, chunk: bytes) -> str:
        """Hash the next request body; its own SHA-256 as S3's `ChecksumSHA256` header."""
        self._whole.update(chunk)
        part = hashlib.sha256(chunk).digest()
        self._parts.append(part)
        return b64(part)

    @property
    def hexdigest(self) -> str:
        """The SHA-256 of every byte added, in hex."""
        return self._whole.hexdigest()

    def confirm_part(self, number: int, answered: str | None) -> bool:
        """Hold the storage's checksum of request body `number` (from 1) to what was sent;
        False when it differs (no answer is no refutation, and no confirmation either)."""
        if answered is None:
            return True
        if answered != b64(self._parts[number - 1]):
            self._refuted = True
            return False
        self._answered += 1
        return True

    def confirm_composite(self, answered: str | None) -> bool:
        """Hold a multipart object's checksum (`<base64>-<parts>`) to the parts sent; False
        when it differs."""
        if answered is None:
            return True
        value, _, count = answered.partition("-")
        composite = b64(hashlib.sha256(b"".join(self._parts)).digest())
        if value != composite or (count and count != str(len(self._parts))):
            self._refuted = True
            return False
        return True

    @property
    def checked(self) -> bool:
        """Whether the storage confirmed every body sent (and nothing it answered differed)."""
        return bool(self._parts) and self._answered == len(self._parts) and not self._refuted
