"""Docker's shell-word rules: quotes, the escape character and `$VAR` expansion.

The builder (not a shell) expands variables in ADD, COPY, ENV, EXPOSE, FROM,
LABEL, STOPSIGNAL, USER, VOLUME, WORKDIR and ARG, with the rules of Docker's
`shell.Lex`: single quotes are literal, double quotes allow `$` expansion and
escape only `"`, `$` and the escape character; outside quotes the escape
character takes the next character literally. `${VAR:-word}`, `${VAR:+word}`
(and the colon-less forms, and `:?`/`?`) behave as in a POSIX shell. Unset
variables expand to "". In word lists an unquoted expansion is split on
whitespace, a quoted one never is.
"""

from __future__ import annotations

from collections.abc import Mapping

from coracle.errors import InvalidParameter

_NAME_START = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_NAME = _NAME_START | set("0123456789")
_SPECIAL = set("0123456789*#@$?!-")


class _Words:
    """Accumulates words; unquoted whitespace ends the current word."""

    def __init__(self) -> None:
        self.words: list[str] = []
        self.current = ""
        self.started = False  # an empty quoted string "" is still a word

    def add(self, text: str, raw: bool) -> None:
        for ch in text:
            if not raw and ch.isspace():
                self.finish()
            else:
                self.current += ch
                self.started = True
        if raw:
            self.started = True

    def finish(self) -> None:
        if self.started:
            self.words.append(self.current)
        self.current, self.started = "", False


class Lexer:
    """Expands one instruction's words against an environment (build args and ENV)."""

    def __init__(self, env: Mapping[str, str], escape: str = "\\") -> None:
        self.env = env
        self.escape = escape
        self.used: set[str] = set()  # names looked up (build args that matter for the cache)

    def word(self, text: str) -> str:
        """One word with quotes removed and variables expanded (ENV/LABEL values, WORKDIR...)."""
        out = _Words()
        self._scan(text, 0, out, stop="", split=False)
        out.finish()
        return "".join(out.words)

    def words(self, text: str) -> list[str]:
        """Whitespace-separated words, expanded (COPY sources, EXPOSE, VOLUME...)."""
        out = _Words()
        self._scan(text, 0, out, stop="", split=True)
        out.finish()
        return out.words

    def _scan(self, text: str, i: int, out: _Words, stop: str, split: bool) -> int:
        while i < len(text):
            ch = text[i]
            if stop and ch == stop:
                return i
            if ch == self.escape:
                if i + 1 < len(text):
                    out.add(text[i + 1], raw=True)
                    i += 2
                else:
                    i += 1
            elif ch == "'":
                end = text.find("'", i + 1)
                if end < 0:
                    raise InvalidParameter("unexpected end of statement while looking for matching single-quote "
                                           f"in {text!r}")
                out.add(text[i + 1:end], raw=True)
                i = end + 1
            elif ch == '"':
                i = self._double_quoted(text, i + 1, out)
            elif ch == "$":
                value, i = self._dollar(text, i + 1)
                out.add(value, raw=not split)
            else:
                out.add(ch, raw=not split)
                i += 1
        if stop:
            raise InvalidParameter(f"missing '{stop}' in {text!r}")
        return i

    def _double_quoted(self, text: str, i: int, out: _Words) -> int:
        piece = ""
        while i < len(text):
            ch = text[i]
            if ch == '"':
                out.add(piece, raw=True)
                return i + 1
            if ch == self.escape and i + 1 < len(text) and text[i + 1] in ('"', "$", self.escape):
                piece += text[i + 1]
                i += 2
            elif ch == "$":
                value, i = self._dollar(text, i + 1)
                piece += value
            else:
                piece += ch
                i += 1
        raise InvalidParameter(f"unexpected end of statement while looking for matching double-quote in {text!r}")

    def _lookup(self, name: str) -> str | None:
        self.used.add(name)
        return self.env.get(name)

    def _dollar(self, text: str, i: int) -> tuple[str, int]:
        """Expansion after a `$` at text[i-1]; returns (value, next index)."""
        if i >= len(text):
            return "$", i
        if text[i] == "{":
            i += 1
            start = i
            while i < len(text) and text[i] in _NAME:
                i += 1
            name = text[start:i]
            if not name:
                if i < len(text) and text[i] in _SPECIAL:
                    raise InvalidParameter(f"unsupported special parameter ${{{text[i]}}} in {text!r}")
                raise InvalidParameter(f"bad substitution in {text!r}")
            if i >= len(text):
                raise InvalidParameter(f"missing '}}' in {text!r}")
            if text[i] == "}":
                return self._lookup(name) or "", i + 1
            colon = text[i] == ":"
            if colon:
                i += 1
            if i >= len(text) or text[i] not in "-+?":
                raise InvalidParameter(f"unsupported modifier in {text!r}")
            modifier = text[i]
            sub = _Words()
            end = self._scan(text, i + 1, sub, stop="}", split=False)
            sub.finish()
            word = "".join(sub.words)
            value = self._lookup(name)
            is_set = value is not None and (value != "" or not colon)
            if modifier == "-":
                return (value if is_set else word) or "", end + 1
            if modifier == "+":
                return (word if is_set else ""), end + 1
            if not is_set:
                raise InvalidParameter(f"{name}: {word or 'is not allowed to be unset'}")
            return value or "", end + 1
        if text[i] not in _NAME_START:
            return "$", i
        start = i
        while i < len(text) and text[i] in _NAME:
            i += 1
        return self._lookup(text[start:i]) or "", i

    def expand(self, text: str) -> str:
        """Variables expanded, quotes and escapes left as written (heredoc contents)."""
        out, i = "", 0
        while i < len(text):
            if text[i] == self.escape and i + 1 < len(text) and text[i + 1] == "$":
                out += "$"
                i += 2
            elif text[i] == "$":
                value, i = self._dollar(text, i + 1)
                out += value
            else:
                out += text[i]
                i += 1
        return out
