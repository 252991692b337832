"""Parsing a Dockerfile into instructions, with Docker's (and BuildKit's) syntax rules.

What is decided here, before any build step runs:
- parser directives (`# syntax=` accepted and ignored, `# escape=` \\ or `), only
  at the very top, before any comment, blank line or instruction;
- logical lines: the escape character at the end of a line continues it; comment
  lines and empty lines inside a continuation are dropped;
- heredocs (`RUN <<EOF`, `COPY <<-"EOT" /f`): the lines up to the terminator
  belong to the instruction;
- `--flag=value` options of FROM, RUN, COPY, ADD and HEALTHCHECK;
- JSON (exec) form versus shell form.
Variable expansion waits for the build, where ARG and ENV values are known
(see `words.Lexer`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from coracle.errors import InvalidParameter

INSTRUCTIONS = ("ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
                "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR")
FLAGS = {
    "FROM": ("platform",),
    "RUN": ("mount", "network", "security"),
    "COPY": ("from", "chown", "chmod", "link", "parents", "exclude"),
    "ADD": ("chown", "chmod", "link", "keep-git-dir", "checksum", "exclude"),
    "HEALTHCHECK": ("interval", "timeout", "start-period", "start-interval", "retries"),
}
HEREDOC_INSTRUCTIONS = ("RUN", "COPY", "ADD")
_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9_]*)\s*=\s*(.+?)\s*$")
_HEREDOC = re.compile(r"""<<(-?)(?:"(\w+)"|'(\w+)'|([A-Za-z_]\w*))""")


class ParseError(InvalidParameter):
    """A Dockerfile that cannot be parsed; the message names the line as Docker does."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"dockerfile parse error on line {line}: {message}")
        self.line = line


@dataclass
class Heredoc:
    name: str
    content: str
    expand: bool       # an unquoted terminator: variables in the content are expanded
    chomp: bool        # `<<-`: leading tabs were removed


@dataclass
class Instruction:
    keyword: str                       # upper case: RUN, COPY ...
    text: str                          # the argument text after the flags (continuations joined)
    line: int                          # where it starts (1-based)
    original: str                      # the logical line as written, for messages and history
    flags: dict[str, list[str]] = field(default_factory=dict)
    heredocs: list[Heredoc] = field(default_factory=list)

    def json_args(self) -> list[str] | None:
        """The exec form's strings, or None for the shell form."""
        text = self.text.strip()
        if not text.startswith("["):
            return None
        try:
            value = json.loads(text)
        except ValueError:
            return None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        return None

    def flag(self, name: str, default: str | None = None) -> str | None:
        values = self.flags.get(name)
        return values[-1] if values else default


@dataclass
class Dockerfile:
    instructions: list[Instruction]
    escape: str = "\\"
    directives: dict[str, str] = field(default_factory=dict)

    def stages(self) -> tuple[list[Instruction], list[list[Instruction]]]:
        """(ARGs before the first FROM, then each stage's instructions starting with its FROM)."""
        meta: list[Instruction] = []
        stages: list[list[Instruction]] = []
        for ins in self.instructions:
            if ins.keyword == "FROM":
                stages.append([ins])
            elif stages:
                stages[-1].append(ins)
            elif ins.keyword == "ARG":
                meta.append(ins)
            else:
                raise ParseError(ins.line, f"{ins.keyword} is not allowed before FROM (only ARG is)")
        if not stages:
            raise InvalidParameter("the Dockerfile (Dockerfile) cannot be empty" if not meta
                                   else "no build stage in current context")
        return meta, stages


def _directives(lines: list[str]) -> tuple[dict[str, str], int]:
    found: dict[str, str] = {}
    for i, line in enumerate(lines):
        m = _DIRECTIVE.match(line.strip())
        if not m or m.group(1).lower() not in ("syntax", "escape", "check"):
            return found, i
        key = m.group(1).lower()
        if key in found:
            raise ParseError(i + 1, f"only one {key} parser directive can be used")
        found[key] = m.group(2)
    return found, len(lines)


def _split_flags(keyword: str, text: str, line: int) -> tuple[dict[str, list[str]], str]:
    flags: dict[str, list[str]] = {}
    rest = text.lstrip()
    while rest.startswith("--"):
        token, _, after = rest.partition(" ")
        name, eq, value = token[2:].partition("=")
        if name not in FLAGS.get(keyword, ()):
            raise ParseError(line, f"unknown flag: {name}")
        if not eq and name != "link":
            raise ParseError(line, f"missing a value on flag: {name}")
        flags.setdefault(name, []).append(value if eq else "true")
        rest = after.lstrip()
    return flags, rest


def parse(source: str | bytes) -> Dockerfile:
    """Instructions of a Dockerfile; ParseError (400) with the line number on bad syntax."""
    if isinstance(source, bytes):
        source = source.decode("utf-8", errors="replace")
    source = source.lstrip("\ufeff")
    lines = source.splitlines()
    directives, first = _directives(lines)
    escape = directives.get("escape", "\\")
    if escape not in ("\\", "`"):
        raise ParseError(1, f"invalid escape token '{escape}' does not match ` or \\")
    instructions: list[Instruction] = []
    i = first
    while i < len(lines):
        stripped = lines[i].strip()
        if not stripped or stripped.startswith("#"):
            i += 1
            continue
        start = i
        parts: list[str] = []
        while True:
            line = lines[i].rstrip()
            i += 1
            if line.endswith(escape):
                parts.append(line[:-1])
                while i < len(lines) and (not lines[i].strip() or lines[i].lstrip().startswith("#")):
                    i += 1  # comments and blank lines inside a continuation are dropped
                if i < len(lines):
                    continue
                break
            parts.append(line)
            break
        logical = "".join(parts).strip()
        word, _, rest = logical.partition(" ")
        if "\t" in word:
            word, _, more = word.partition("\t")
            rest = more + " " + rest
        keyword = word.upper()
        if keyword not in INSTRUCTIONS:
            raise ParseError(start + 1, f"unknown instruction: {word}")
        flags, rest = _split_flags(keyword, rest, start + 1)
        heredocs: list[Heredoc] = []
        if keyword in HEREDOC_INSTRUCTIONS and not rest.startswith("["):
            for m in _HEREDOC.finditer(rest):
                chomp, quoted, name = m.group(1) == "-", m.group(4) is None, m.group(2) or m.group(3) or m.group(4)
                body: list[str] = []
                while True:
                    if i >= len(lines):
                        raise ParseError(start + 1, f"unterminated heredoc {name}")
                    text = lines[i]
                    i += 1
                    if chomp:
                        text = text.lstrip("\t")
                    if text == name:
                        break
                    body.append(text)
                heredocs.append(Heredoc(name, "".join(b + "\n" for b in body), expand=not quoted, chomp=chomp))
        if keyword == "ONBUILD":
            inner = rest.split(None, 1)[0].upper() if rest.strip() else ""
            if inner in ("ONBUILD", "FROM", "MAINTAINER"):
                raise ParseError(start + 1, f"{inner} isn't allowed as an ONBUILD trigger")
            if inner not in INSTRUCTIONS:
                raise ParseError(start + 1, f"unknown instruction: {inner or 'ONBUILD needs an instruction'}")
        if not rest.strip() and keyword not in ("RUN", "CMD", "ENTRYPOINT") or \
                not rest.strip() and not heredocs and keyword == "RUN":
            raise ParseError(start + 1, f"{keyword} requires at least one argument")
        instructions.append(Instruction(keyword, rest.strip(), start + 1, logical, flags, heredocs))
    return Dockerfile(instructions, escape, directives)


def key_values(ins: Instruction, escape: str = "\\") -> list[tuple[str, str | None]]:
    """ENV/LABEL/ARG arguments as (key, raw value) pairs, values still quoted and unexpanded.

    `KEY=VALUE ...` pairs split at unquoted whitespace, or the legacy `KEY VALUE`
    form (one pair, the rest of the line is the value) for ENV and LABEL.
    """
    text = ins.text
    words = _raw_words(text, ins.line, escape)
    if not words:
        raise ParseError(ins.line, f"{ins.keyword} requires at least one argument")
    if "=" not in words[0] and ins.keyword != "ARG":
        key, _, value = text.partition(" ")
        if not value.strip():
            raise ParseError(ins.line, f"{ins.keyword} names can not be blank" if not key
                             else f"{ins.keyword} must have two arguments")
        return [(key, value.strip())]
    pairs = []
    for word in words:
        key, eq, value = word.partition("=")
        if not key:
            raise ParseError(ins.line, f"{ins.keyword} names can not be blank")
        if not eq and ins.keyword != "ARG":
            raise ParseError(ins.line, f"Syntax error - can't find = in {word!r}. Must be of the form: name=value")
        pairs.append((key, value if eq else None))
    return pairs


def _raw_words(text: str, line: int, escape: str) -> list[str]:
    """Split at unquoted whitespace, keeping quotes and escapes (Docker's parseNameVal)."""
    words, current, quote, i = [], "", "", 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == escape and quote == '"' and i + 1 < len(text):
                current += text[i:i + 2]
                i += 2
                continue
            if ch == quote:
                quote = ""
            current += ch
        elif ch in "\"'":
            quote = ch
            current += ch
        elif ch == escape and i + 1 < len(text):
            current += text[i:i + 2]
            i += 2
            continue
        elif ch.isspace():
            if current:
                words.append(current)
            current = ""
        else:
            current += ch
        i += 1
    if quote:
        raise ParseError(line, f"unmatched quote in {text!r}")
    if current:
        words.append(current)
    return words
