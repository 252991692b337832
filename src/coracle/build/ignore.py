"""`.dockerignore`: which context paths a build leaves out (Docker's pattern rules).

Each non-comment line is a pattern, cleaned like a path (a leading `/` is
dropped); `*` and `?` never cross a `/`, `**` matches any number of
directories, `!pattern` re-includes. The last pattern that matches a path (or
one of its parent directories) decides. Shared by the daemon (the context it
receives) and the native CLI (the context it sends).
"""

from __future__ import annotations

import posixpath
import re


class _Pattern:
    """One line; a plain class, not a dataclass: the native CLI imports this module as it starts."""

    __slots__ = ("regex", "exclusion", "text")

    def __init__(self, regex: re.Pattern[str], exclusion: bool, text: str) -> None:
        self.regex = regex
        self.exclusion = exclusion   # a `!` line: matching paths are kept
        self.text = text


def _translate(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):   # `**/` : zero or more directories
                i += 1
                out += "(?:.*/)?"
            else:
                out += ".*"
            continue
        if ch == "*":
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out += re.escape(ch)
            else:
                body = pattern[i + 1:end]
                if body.startswith("^") or body.startswith("!"):
                    body = "^" + body[1:]
                out += "[" + body.replace("\\", "\\\\") + "]"
                i = end
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(ch)
        i += 1
    return re.compile("^" + out + "$")


class IgnoreRules:
    def __init__(self, text: str = "") -> None:
        self.patterns: list[_Pattern] = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            exclusion = line.startswith("!")
            if exclusion:
                line = line[1:].strip()
            cleaned = posixpath.normpath(line).lstrip("/")
            if cleaned in ("", "."):
                continue
            self.patterns.append(_Pattern(_translate(cleaned), exclusion, cleaned))

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def ignored(self, path: str) -> bool:
        """Whether the context path (relative, `/`-separated) is left out."""
        path = posixpath.normpath(path).lstrip("/")
        parents = []
        head = path
        while "/" in head:
            head = head.rsplit("/", 1)[0]
            parents.append(head)
        matched = False
        for p in self.patterns:
            if p.regex.match(path) or any(p.regex.match(parent) for parent in parents):
                matched = not p.exclusion
        return matched

    def may_keep_below(self, directory: str) -> bool:
        """Whether an ignored directory could still hold re-included paths (so walk into it)."""
        directory = posixpath.normpath(directory).lstrip("/")
        return any(p.exclusion and (p.text.startswith(directory + "/") or "*" in p.text) for p in self.patterns)
