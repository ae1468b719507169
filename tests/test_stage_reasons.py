"""What a failed stage tells the user: what failed, in their terms, never a node's file names."""

from __future__ import annotations

import errno

from spool.reactors.stages import unexpected


def test_an_unexpected_disk_error_names_what_failed_but_not_the_nodes_file() -> None:
    full = OSError(errno.ENOSPC, "No space left on device", "/var/spool/work/j/1/media.mp4.mp4")
    failure = unexpected(full)
    assert failure.reason == "Internal error: OSError: No space left on device"
    assert failure.retryable is True


def test_an_unexpected_error_of_another_kind_keeps_its_message() -> None:
    assert unexpected(KeyError("x")).reason == "Internal error: KeyError: 'x'"
