"""Errors the domain raises; each surface maps them to its own error shape."""


class DomainError(Exception):
    """A command was refused by the rules of the domain."""


class ConcurrencyError(DomainError):
    """A stream moved on since it was read: re-read it and decide again."""

    def __init__(self, stream_id: str, expected: int | None, actual: int | None = None) -> None:
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"stream {stream_id!r} is at version {actual if actual is not None else '?'}, "
            f"expected {expected}"
        )


class UnknownEventType(DomainError):
    """An event type name that no module registered (written by a newer Spool?)."""


class InvalidTransition(DomainError):
    """The command does not apply to the aggregate in its current state."""


class NotFound(DomainError):
    """The thing a command names does not exist, or is not the caller's to see."""


class InvalidCommand(DomainError):
    """A command's own values are wrong, whatever the state it meets."""


class Forbidden(DomainError):
    """The caller may not give this command."""


class Conflict(DomainError):
    """The command met a state that changed under it (lost races, a replaced object): retry."""


class IdempotencyKeyReused(DomainError):
    """An `Idempotency-Key` already recorded for another request."""


class StorageRefused(DomainError):
    """The account's storage refused what the command asked of it."""
