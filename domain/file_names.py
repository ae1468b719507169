"""Names a user gives to stored files and folders, checked to be safe on every common file system.

A job's file lands in object storage first, but people download it to Windows, macOS and Linux
disks and sync folders, so a name is held to what all of them accept: none of `\\ / : * ? " < > |`,
no control characters, no trailing dot or space (Windows drops them, so two names would become
one), no device name of Windows (`CON`, `nul.mp4`, `COM1`...) and no `..`. A name that breaks a
rule is refused with the field and the offending character or name, never quietly rewritten:
the file a user finds must carry the name they asked for.

Only new input is checked; names already in a job's events stay as they were stored.
"""

from __future__ import annotations

import unicodedata
from typing import Final

MAX_FILENAME_LENGTH: Final = 255
MAX_FOLDER_LENGTH: Final = 200

FORBIDDEN_CHARACTERS: Final = '\\/:*?"<>|'
"""Characters Windows refuses in a name (and `/`, which separates names everywhere)."""

# Invisible characters that reorder the text around them: "clip\u202egpj.exe" displays as
# "clipexe.jpg". A name is shown to people, so it must read as what it is.
_BIDI_CONTROLS: Final = frozenset(
    "\u061c\u200e\u200f"  # Arabic letter mark, left-to-right and right-to-left marks
    "\u202a\u202b\u202c\u202d\u202e"  # embeddings, pop, overrides
    "\u2066\u2067\u2068\u2069"  # isolates
)

# Windows opens a device, not a file, for these names, whatever the extension ("CON.mp4").
# The superscript digits are in Microsoft's list too.
RESERVED_NAMES: Final = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{device}{n}" for device in ("COM", "LPT") for n in "0123456789\u00b9\u00b2\u00b3"}
)


class UnsafeName(ValueError):
    """A name a file system would refuse or change; str() names the field and the reason."""


def check_filename(value: str, *, field: str = "filename") -> str:
    """`value` as the name of one file (without its extension), in Unicode NFC.

    NFC gives one spelling per visible name (macOS writes "é" decomposed).

    Raises:
        UnsafeName: the name is empty, too long, or breaks a rule of the module docstring.
    """
    if len(value) > MAX_FILENAME_LENGTH:
        raise UnsafeName(f"Invalid {field}: too long (max {MAX_FILENAME_LENGTH} characters)")
    name = unicodedata.normalize("NFC", value)
    _check_segment(name, field)
    return name


def check_folder(value: str, *, field: str = "folder", max_length: int = MAX_FOLDER_LENGTH) -> str:
    """`value` as a folder path of `/`-separated names, in NFC, as `a/b/c`.

    Repeated and trailing `/` are dropped; each name between them follows the rules of a file
    name (so `\\` is refused, not read as a separator).

    Raises:
        UnsafeName: the path is empty, too long, starts with `/`, or one of its names breaks a
            rule of the module docstring.
    """
    if len(value) > max_length:
        raise UnsafeName(f"Invalid {field}: too long (max {max_length} characters)")
    path = unicodedata.normalize("NFC", value)
    if path.startswith("/"):
        raise UnsafeName(f"Invalid {field}: must be relative (must not start with '/')")
    segments = [segment for segment in path.split("/") if segment]
    if not segments:
        raise UnsafeName(f"Invalid {field}: must not be empty")
    for segment in segments:
        _check_segment(segment, field)
    return "/".join(segments)


def is_device_name(name: str) -> bool:
    """Whether Windows opens a device for `name`: `CON`, `nul.mp4`, `Com1 .txt`, any case."""
    return name.split(".", 1)[0].rstrip(" ").upper() in RESERVED_NAMES


def _check_segment(name: str, field: str) -> None:
    """Raise UnsafeName when `name` is not one safe path segment."""
    for c in name:
        if c in FORBIDDEN_CHARACTERS:
            raise UnsafeName(
                f"Invalid {field}: '{c}' is not allowed "
                f"(a name must not contain any of {' '.join(FORBIDDEN_CHARACTERS)})"
            )
        category = unicodedata.category(c)
        if category == "Cc":
            raise UnsafeName(f"Invalid {field}: control character U+{ord(c):04X} is not allowed")
        if category == "Cs":
            raise UnsafeName(f"Invalid {field}: unpaired surrogate U+{ord(c):04X} is not allowed")
        if c in _BIDI_CONTROLS:
            raise UnsafeName(
                f"Invalid {field}: text direction control U+{ord(c):04X} is not allowed"
            )
    if not name.strip():
        raise UnsafeName(f"Invalid {field}: must not be empty")
    if ".." in name:
        raise UnsafeName(f"Invalid {field}: must not contain '..'")
    if name[-1] in ". ":
        raise UnsafeName(
            f"Invalid {field}: {name!r} ends with a {'dot' if name[-1] == '.' else 'space'}, "
            "which Windows drops"
        )
    if is_device_name(name):
        stem = name.split(".", 1)[0].rstrip(" ")
        raise UnsafeName(
            f"Invalid {field}: {stem!r} is a device name on Windows, not allowed as a name "
            "with or without an extension"
        )
