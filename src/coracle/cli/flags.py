"""Command-line flags: argparse's declarations, parsed without argparse on the common path.

Why: argparse is the CLI's largest start-up cost after the interpreter. Its
import brings gettext and locale, every parser compiles regular expressions and
looks up translation catalogues on disk, and `run` declares some eighty flags
one `add_argument` at a time: together more than the daemon needs to start a
container. `Flags` records the same declarations and parses the command lines
people type (long and short flags, `--flag=value`, bundled boolean short flags,
positionals after the flags, a trailing command) itself. Anything else (help,
an unknown or malformed flag, a value that looks like a flag, a type that
refuses its value, positionals between flags) goes to a real argparse parser
built from the very same declarations, so help, errors and every corner of
argparse's behaviour stay exactly argparse's.
"""

from __future__ import annotations

import types

TYPE_CHECKING = False  # typing is for checkers only: it costs start-up time
if TYPE_CHECKING:
    from typing import Any
    from collections.abc import Callable

REMAINDER = "..."          # argparse.REMAINDER: everything after the positionals before it
_VARIABLE = ("?", "*", "+", REMAINDER)
_KNOWN = {"action", "nargs", "const", "default", "type", "choices", "dest", "help", "metavar"}


class _Fallback(Exception):
    """This command line needs argparse."""


class _Spec:
    __slots__ = ("dest", "action", "nargs", "const", "default", "type", "choices")

    def __init__(self, names: tuple[str, ...], kw: dict[str, Any]) -> None:
        self.action = kw.get("action") or "store"
        self.nargs = kw.get("nargs")
        self.const = kw.get("const")
        self.type = kw.get("type")
        self.choices = kw.get("choices")
        longs = [n for n in names if n.startswith("--")]
        dest = kw.get("dest") or (longs or list(names))[0].lstrip("-").replace("-", "_")
        self.dest = dest
        default = kw.get("default")
        if self.action == "store_true" and "default" not in kw:
            default = False
        self.default = default

    def converted(self, text: str) -> Any:
        if self.type is None:
            return text
        try:
            return self.type(text)
        except Exception:  # argparse words the refusal (or lets the type's own error through)
            raise _Fallback() from None

    def value(self, text: str) -> Any:
        value = self.converted(text)
        if self.choices is not None and value not in self.choices:
            raise _Fallback()
        return value


class Flags:
    """Collects add_argument calls; parse_args returns a namespace as argparse would make it."""

    def __init__(self, full: Callable[[], Any]) -> None:
        self._full = full                       # () -> an empty argparse parser with the same settings
        self._calls: list[tuple[tuple[str, ...], dict[str, Any]]] = []
        self._options: dict[str, _Spec] = {}
        self._positionals: list[_Spec] = []
        self._specs: list[_Spec] = []
        self._simple = True
        # (least, most) positionals for verbs whose last one is a command taken whole (exec): the usage
        # parser's count, checked by `require`
        self.counts: tuple[int, int | None] | None = None

    def add_argument(self, *names: str, **kw: Any) -> None:
        self._calls.append((names, kw))
        spec = _Spec(names, kw)
        self._specs.append(spec)
        if names[0].startswith("-"):
            supported = spec.action in ("store_true", "append", "help") or (
                spec.action == "store" and (spec.nargs is None or spec.nargs == "?"))
            for name in names:
                self._options[name] = spec
        else:
            supported = spec.action == "store" and (spec.nargs is None or spec.nargs in _VARIABLE) and \
                not any(p.nargs is not None for p in self._positionals)  # only the last one may vary
            self._positionals.append(spec)
        self._simple = self._simple and supported and not set(kw) - _KNOWN

    def argparse(self) -> Any:
        """The argparse parser of these declarations (for help, errors and unusual command lines)."""
        parser = self._full()
        parser.counts = self.counts
        for names, kw in self._calls:
            parser.add_argument(*names, **kw)
        return parser

    def require(self, given: int) -> None:
        """After parsing, for a verb with `counts`: docker's usage error unless `given` positionals fit."""
        least, most = self.counts or (0, None)
        if given < least or (most is not None and given > most):
            self.argparse().wrong_count(least, most)

    def parse_args(self, args: list[str]) -> Any:
        if self._simple:
            try:
                return self._parse(args)
            except _Fallback:
                pass
        return self.argparse().parse_args(args)

    def _parse(self, args: list[str]) -> types.SimpleNamespace:
        values: dict[str, Any] = {}
        given: set[str] = set()
        words: list[str] = []
        i = 0
        while i < len(args):
            arg = args[i]
            i += 1
            if arg == "--":
                raise _Fallback()   # what argparse keeps of it differs between Python releases
            if words and self._positionals[-1].nargs == REMAINDER and len(words) >= len(self._positionals) - 1:
                words.append(arg)   # the command and its own flags
                continue
            if not arg.startswith("-") or arg == "-":
                words.append(arg)
                continue
            if words:
                raise _Fallback()   # flags between positionals: argparse's ordering rules apply
            name, eq, attached = arg.partition("=") if arg.startswith("--") else (arg, "", "")
            spec = self._options.get(name)
            if spec is None:
                for flag in self._bundle(arg):
                    self._store(flag, None, values, given)
                continue
            if spec.action == "help":
                raise _Fallback()
            if spec.action == "store_true":
                if eq:
                    raise _Fallback()
                self._store(spec, None, values, given)
                continue
            if eq:
                value = attached
            elif spec.nargs == "?":
                if i < len(args) and (not args[i].startswith("-") or args[i] == "-"):
                    value, i = args[i], i + 1
                else:
                    self._store(spec, spec.const, values, given, typed=not isinstance(spec.const, str))
                    continue
            elif i < len(args) and (not args[i].startswith("-") or args[i] == "-"):
                value, i = args[i], i + 1
            else:
                raise _Fallback()   # a missing value, or one that looks like a flag
            self._store(spec, value, values, given)
        self._place(words, values)
        for spec in self._specs:
            if spec.dest in given or spec.action == "help" or spec.dest in values:
                continue
            default = spec.default
            if spec.action == "append" and isinstance(default, list):
                default = list(default)
            elif isinstance(default, str) and spec.type is not None and spec.action == "store":
                default = spec.converted(default)
            values[spec.dest] = default
        return types.SimpleNamespace(**values)

    def _bundle(self, arg: str) -> list[_Spec]:
        """`-it`: boolean short flags written together (anything else is argparse's to read)."""
        if arg.startswith("--") or len(arg) < 3:
            raise _Fallback()
        flags = [self._options.get("-" + ch) for ch in arg[1:]]
        if any(f is None or f.action != "store_true" for f in flags):
            raise _Fallback()
        return flags  # type: ignore[return-value]  # None excluded above

    @staticmethod
    def _store(spec: _Spec, text: Any, values: dict[str, Any], given: set[str], typed: bool = False) -> None:
        if spec.action == "store_true":
            value: Any = True
        else:
            value = text if typed else spec.value(text)
        if spec.action == "append":
            if spec.dest not in given:
                values[spec.dest] = list(spec.default or [])
            values[spec.dest].append(value)
        else:
            values[spec.dest] = value
        given.add(spec.dest)

    def _place(self, words: list[str], values: dict[str, Any]) -> None:
        """Positionals: fixed ones first, the last may take none, one or many."""
        fixed = [p for p in self._positionals if p.nargs is None]
        if len(words) < len(fixed):
            raise _Fallback()   # argparse says which are required
        for spec, word in zip(fixed, words, strict=False):
            values[spec.dest] = spec.value(word)
        rest = words[len(fixed):]
        last = self._positionals[-1] if self._positionals and self._positionals[-1].nargs else None
        if last is None:
            if rest:
                raise _Fallback()   # unrecognized arguments
            return
        if last.nargs == "?":
            if len(rest) > 1:
                raise _Fallback()
            default = last.converted(last.default) if isinstance(last.default, str) else last.default
            values[last.dest] = last.value(rest[0]) if rest else default
        elif last.nargs == "+" and not rest:
            raise _Fallback()
        elif last.nargs == REMAINDER:
            values[last.dest] = rest
        else:
            values[last.dest] = [last.value(w) for w in rest] if rest else \
                (last.default if last.default is not None else [])
