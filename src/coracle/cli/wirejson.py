"""JSON for the CLI's requests and answers, on the interpreter's C codec without the `json` package.

Why: `import json` brings `re`, `enum`, `functools` and `collections` with it,
which on this machine costs more CPU than the interpreter's own start and more
than everything else `coracle run` or `coracle build` does. The codec that json
itself uses (`_json`, built into CPython) reads and writes exactly the same
JSON; only the thin Python layer around it is written here. Output is what
`json.dumps` writes by default (ASCII, `", "` and `": "` separators).
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False  # typing is for checkers only: it costs start-up time
if TYPE_CHECKING:
    from typing import Any

_WHITESPACE = " \t\n\r"


class _Reading:
    """The settings the C scanner reads: json.loads' defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float  # NaN, Infinity, -Infinity


def _unserializable(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_scan = _json.make_scanner(_Reading())  # type: ignore[arg-type]  # the C scanner reads these attributes
_ENCODERS = {separators: _json.make_encoder(None, _unserializable, _json.encode_basestring_ascii, None,
                                            separators[1], separators[0], False, False, True)
             for separators in ((", ", ": "), (",", ":"))}


def loads(text: str | bytes | bytearray) -> Any:
    """A JSON document (UTF-8 when bytes); ValueError when it is not one."""
    if not isinstance(text, str):
        text = bytes(text).decode("utf-8")
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan(text, start)
    except StopIteration as exc:
        raise ValueError(f"Expecting value: char {exc.value}") from None
    if text[end:].strip(_WHITESPACE):
        raise ValueError(f"Extra data: char {end}")
    return value


def dumps(value: Any, compact: bool = False) -> str:
    """As json.dumps(value), or with separators=(",", ":") when compact."""
    return "".join(_ENCODERS[(",", ":") if compact else (", ", ": ")](value, 0))
