"""The subset of Go's text/template that `docker --format` users write.

Supported: `{{.Field.Sub}}`, `{{$var.Field}}`, literals, pipelines with `|`,
parentheses, `if`/`else if`/`else`, `range` (with `$v :=` or `$k, $v :=`),
`with`, variables (`:=`, `=`), comments, `{{-`/`-}}` trimming, and the
functions docker registers on top of Go's builtins: json, join, split, index,
len, upper, lower, title, pad, truncate, print, printf, println, eq/ne/lt/le/
gt/ge, and/or/not.

Data is either JSON decoded into dicts/lists (inspect) or a formatting context
object whose attributes or methods are the fields (`ps`, `images`: `.ID`,
`.Label "k"`). Values print the way Go prints them: true/false, `[a b]`,
`map[k:v]`, `<no value>` for a missing map key.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is for checkers only: it costs start-up time
if TYPE_CHECKING:
    import re
    from typing import Any
    from collections.abc import Callable

# `re` and `json` are imported where they are used: on this interpreter they (and the enum,
# functools and collections they pull in) are ~17 ms of a `coracle ps`, whose default table
# needs neither (field chains are lexed without the regex, values printed by go_str).


class TemplateError(Exception):
    """A template that does not parse, or fails while executing."""


class _Missing:
    """A map key that is not there: falsy, prints `<no value>` like Go."""

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "<no value>"


MISSING = _Missing()


# ----- lexing -------------------------------------------------------------

class _Tok:
    __slots__ = ("kind", "text", "glued")

    def __init__(self, kind: str, text: str, glued: bool) -> None:
        self.kind, self.text = kind, text
        self.glued = glued  # no whitespace before it (`(...).Field`)


def _field_chain(src: str) -> bool:
    """`.ID`, `.Client.Version`: the whole action of every default table, lexed at once."""
    names = src.split(".")
    return len(names) > 1 and not names[0] and all(n.isidentifier() and n.isascii() for n in names[1:])


_PUNCTUATION = {"|": "pipe", "(": "lparen", ")": "rparen", ",": "comma", "=": "assign"}
_IDENT_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_IDENT = _IDENT_START | frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")


def _lex_action(src: str) -> list[_Tok]:
    """The tokens of one action, by hand rather than with `re`: importing `re` (and the enum,
    functools and collections it pulls in) was ~10 ms of every command with a template, `version`'s
    own default among them."""
    if _field_chain(src.strip()):
        return [_Tok("field", src.strip(), False)]
    toks: list[_Tok] = []
    pos, glued, n = 0, False, len(src)
    while pos < n:
        c = src[pos]
        if c.isspace():
            while pos < n and src[pos].isspace():
                pos += 1
            glued = False
            continue
        end, kind = _token_end(src, pos)
        if end <= pos:
            raise TemplateError(f"unexpected {c!r} in command")
        toks.append(_Tok(kind, src[pos:end], glued))
        pos, glued = end, True
    return toks


def _token_end(src: str, pos: int) -> tuple[int, str]:
    """(end, kind) of the token at `pos`; end == pos if none starts there."""
    c, n = src[pos], len(src)
    if c in _PUNCTUATION:
        return pos + 1, _PUNCTUATION[c]
    if c == ":":
        return (pos + 2, "declare") if src.startswith(":=", pos) else (pos, "")
    if c == '"':  # Go's interpreted string: backslash escapes, no newline after a backslash
        i = pos + 1
        while i < n and src[i] != '"':
            if src[i] == "\\":
                if i + 1 >= n or src[i + 1] == "\n":
                    return pos, ""
                i += 1
            i += 1
        return (i + 1, "string") if i < n else (pos, "")
    if c == "`":
        close = src.find("`", pos + 1)
        return (close + 1, "raw") if close > 0 else (pos, "")
    if c == "'":
        body = 2 if src[pos + 1:pos + 2] == "\\" and src[pos + 2:pos + 3] not in ("", "\n") else 1
        if body == 1 and src[pos + 1:pos + 2] in ("", "'", "\\"):
            return pos, ""
        return (pos + body + 2, "char") if src[pos + body + 1:pos + body + 2] == "'" else (pos, "")
    if c == "." and src[pos + 1:pos + 2].isdecimal():  # `.5` is a number in Go, not the dot
        return _number_end(src, pos), "number"
    if c in (".", "$"):
        i = pos if c == "." else _ident_end(src, pos + 1, _IDENT)  # `$` then any of [A-Za-z0-9_]
        while src[i:i + 1] == "." and src[i + 1:i + 2] in _IDENT_START:
            i = _ident_end(src, i + 1, _IDENT_START)
        if c == "$":
            return i, "var"
        return (i, "field") if i > pos else (pos + 1, "dot")
    if c in _IDENT_START:
        return _ident_end(src, pos, _IDENT_START), "ident"
    return _number_end(src, pos), "number"


def _number(text: str) -> int | float:
    """A number literal's value as Go reads it: 0x hex, a leading 0 for octal (017 is 15), else decimal."""
    digits = text.lstrip("+-")
    sign = -1 if text.startswith("-") else 1
    try:
        if digits[:2] in ("0x", "0X"):
            return sign * int(digits[2:], 16)
        if digits.isdecimal():
            return sign * int(digits, 8 if len(digits) > 1 and digits.startswith("0") else 10)
        return float(text)
    except ValueError:
        raise TemplateError(f"bad number syntax: {text!r}") from None


def _ident_end(src: str, pos: int, first: frozenset[str]) -> int:
    """End of [first][A-Za-z0-9_]* at `pos` (nothing if `first` does not match)."""
    if src[pos:pos + 1] not in first:  # "" (the end) is in no set
        return pos
    i = pos + 1
    while i < len(src) and src[i] in _IDENT:
        i += 1
    return i


def _number_end(src: str, pos: int) -> int:
    """End of a number at `pos`: [-+]? then 0x hex, digits with an optional fraction and exponent, or .digits."""
    n = len(src)
    i = pos + 1 if src[pos] in "+-" else pos
    if src[i:i + 2] in ("0x", "0X") and src[i + 2:i + 3] in _HEX:
        i += 2
        while i < n and src[i] in _HEX:
            i += 1
        return i
    if i < n and src[i].isdecimal():
        while i < n and src[i].isdecimal():
            i += 1
        if src[i:i + 1] == ".":
            i += 1
            while i < n and src[i].isdecimal():
                i += 1
        if src[i:i + 1] in ("e", "E"):
            j = i + 2 if src[i + 1:i + 2] in ("+", "-") else i + 1
            if j < n and src[j].isdecimal():
                while j < n and src[j].isdecimal():
                    j += 1
                i = j
        return i
    if src[i:i + 1] == "." and src[i + 1:i + 2].isdecimal():
        i += 1
        while i < n and src[i].isdecimal():
            i += 1
        return i
    return pos


def _split(template: str) -> list[tuple[str, str]]:
    """Alternating ("text", s) and ("action", s), with `{{-`/`-}}` trimming applied."""
    parts: list[tuple[str, str]] = []
    pos = 0
    while True:
        start = template.find("{{", pos)
        if start < 0:
            parts.append(("text", template[pos:]))
            return parts
        text = template[pos:start]
        inner_start = start + 2
        if template.startswith("-", inner_start) and template[inner_start + 1:inner_start + 2].isspace():
            text = text.rstrip()
            inner_start += 2
        if template.startswith("/*", inner_start):
            end = template.find("*/", inner_start)
            close = template.find("}}", end) if end >= 0 else -1
            if close < 0:
                raise TemplateError("unclosed comment")
            parts.append(("text", text))
            pos = close + 2
            if template[end + 2:close].strip() == "-":
                pos = len(template) - len(template[pos:].lstrip())
            continue
        end = template.find("}}", inner_start)
        if end < 0:
            raise TemplateError("unclosed action")
        inner = template[inner_start:end]
        pos = end + 2
        if inner.endswith("-") and inner[-2:-1].isspace():
            inner = inner[:-1]
            pos = len(template) - len(template[pos:].lstrip())
        parts.append(("text", text))
        parts.append(("action", inner))


# ----- nodes --------------------------------------------------------------

class _Term:
    __slots__ = ("kind", "value", "chain")

    def __init__(self, kind: str, value: Any = None, chain: list[str] | None = None) -> None:
        self.kind = kind  # field | var | lit | dot | ident | paren
        self.value = value
        self.chain = chain or []


class _Pipeline:
    __slots__ = ("commands", "decl", "assign")

    def __init__(self, commands: list[list[_Term]]) -> None:
        self.commands = commands
        self.decl: list[str] = []
        self.assign = False  # `=` rather than `:=`


class _Node:
    __slots__ = ("kind", "text", "pipe", "body", "orelse")

    def __init__(self, kind: str, text: str = "", pipe: _Pipeline | None = None) -> None:
        self.kind = kind  # text | action | if | range | with
        self.text = text
        self.pipe = pipe
        self.body: list[_Node] = []
        self.orelse: list[_Node] = []

    @property
    def piped(self) -> _Pipeline:
        """The pipeline of an action, if, with or range node: the parser gives each one."""
        if self.pipe is None:
            raise TemplateError(f"template: {self.kind} without a pipeline")
        return self.pipe


class _Parser:
    def __init__(self, template: str) -> None:
        self.parts = _split(template)
        self.i = 0

    def parse(self) -> list[_Node]:
        nodes, stop = self._list()
        if stop is not None:
            raise TemplateError(f"unexpected {{{{{stop}}}}}")
        return nodes

    def _list(self) -> tuple[list[_Node], str | None]:
        """Nodes up to a closing keyword (end / else ...), which is returned unconsumed as text."""
        nodes: list[_Node] = []
        while self.i < len(self.parts):
            kind, text = self.parts[self.i]
            self.i += 1
            if kind == "text":
                if text:
                    nodes.append(_Node("text", text=text))
                continue
            toks = _lex_action(text)
            if not toks:
                raise TemplateError("missing value for command")
            head = toks[0]
            if head.kind == "ident" and head.text in ("end", "else"):
                return nodes, text.strip()
            if head.kind == "ident" and head.text in ("if", "range", "with"):
                nodes.append(self._block(head.text, toks[1:]))
            elif head.kind == "ident" and head.text in ("define", "template", "block", "break", "continue"):
                raise TemplateError(f"{head.text} is not supported")
            else:
                nodes.append(_Node("action", pipe=self._pipeline(toks)))
        return nodes, None

    def _block(self, kind: str, toks: list[_Tok]) -> _Node:
        node = _Node(kind, pipe=self._pipeline(toks))
        node.body, stop = self._list()
        if stop is None:
            raise TemplateError(f"unexpected EOF in {kind}")
        if stop.startswith("else"):
            rest = stop[4:].strip()
            if rest.startswith("if ") or rest.startswith("with "):  # else if / else with: a nested block
                word, _, cond = rest.partition(" ")
                node.orelse = [self._block(word, _lex_action(cond))]
                return node
            node.orelse, stop = self._list()
            if stop != "end":
                raise TemplateError(f"expected end; found {stop}")
        elif stop != "end":
            raise TemplateError(f"unexpected {stop}")
        return node

    def _pipeline(self, toks: list[_Tok]) -> _Pipeline:
        pipe = _Pipeline([])
        for n in (2, 1):  # `$k, $v :=` or `$x :=` / `$x =`
            if len(toks) > 2 * n - 1 and all(toks[2 * j].kind == "var" for j in range(n)) and \
                    all(toks[2 * j + 1].kind == "comma" for j in range(n - 1)) and \
                    toks[2 * n - 1].kind in ("declare", "assign"):
                pipe.decl = [toks[2 * j].text for j in range(n)]
                pipe.assign = toks[2 * n - 1].kind == "assign"
                toks = toks[2 * n:]
                break
        pos = 0
        command: list[_Term] = []
        while pos < len(toks):
            tok = toks[pos]
            if tok.kind == "pipe":
                if not command:
                    raise TemplateError("missing command before |")
                pipe.commands.append(command)
                command = []
                pos += 1
                continue
            term, pos = self._term(toks, pos)
            command.append(term)
        if not command:
            raise TemplateError("missing value for command")
        pipe.commands.append(command)
        return pipe

    def _term(self, toks: list[_Tok], pos: int) -> tuple[_Term, int]:
        tok = toks[pos]
        pos += 1
        if tok.kind == "lparen":
            depth, end = 1, pos
            while end < len(toks) and depth:
                depth += {"lparen": 1, "rparen": -1}.get(toks[end].kind, 0)
                end += 1
            if depth:
                raise TemplateError("unclosed left paren")
            term = _Term("paren", self._pipeline(toks[pos:end - 1]))
            pos = end
        elif tok.kind == "field":
            term = _Term("field", chain=tok.text.split(".")[1:])
        elif tok.kind == "dot":
            term = _Term("dot")
        elif tok.kind == "var":
            name, *chain = tok.text.split(".")
            term = _Term("var", name, chain)
        elif tok.kind in ("string", "char"):
            text = tok.text[1:-1]
            if "\\" in text:  # escapes: Go's are JSON's for what templates write
                import json

                text = json.loads('"' + text + '"')
            term = _Term("lit", text if tok.kind == "string" else ord(text))
        elif tok.kind == "raw":
            term = _Term("lit", tok.text[1:-1])
        elif tok.kind == "number":
            term = _Term("lit", _number(tok.text))
        elif tok.kind == "ident":
            literal = {"true": True, "false": False, "nil": None}
            term = _Term("lit", literal[tok.text]) if tok.text in literal else _Term("ident", tok.text)
        else:
            raise TemplateError(f"unexpected {tok.text!r} in operand")
        while pos < len(toks) and toks[pos].kind == "field" and toks[pos].glued and term.kind == "paren":
            term.chain += toks[pos].text.split(".")[1:]
            pos += 1
        return term, pos


# ----- printing and truth (Go's rules) ------------------------------------

def go_str(value: Any) -> str:
    """`fmt.Sprint` for JSON-ish values."""
    if value is MISSING:
        return "<no value>"
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e21 else repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(go_str(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{go_str(value[k])}" for k in sorted(value)) + "]"
    return str(value)


def truth(value: Any) -> bool:
    if value is MISSING or value is None:
        return False
    if isinstance(value, (bool, int, float, str, list, tuple, dict)):
        return bool(value)
    return True


_STRUCT_KEY = r"[A-Z][A-Za-z0-9_]*$"  # compiled on first use (re caches it)


def to_json(value: Any) -> str:
    """docker's `json` function: compact, no HTML escaping; context objects by their fields."""
    import json

    return json.dumps(_go_order(value), separators=(",", ":"), ensure_ascii=False, default=_jsonable)


def _go_order(value: Any) -> Any:
    """Go marshals structs in field order but maps with sorted keys. Struct fields are
    exported (capitalised) identifiers; anything else (labels, networks, ports) is a map."""
    if isinstance(value, dict):
        import re

        items = [(k, _go_order(v)) for k, v in value.items()]
        if not all(re.match(_STRUCT_KEY, str(k)) for k in value):
            items.sort(key=lambda kv: str(kv[0]))
        return dict(items)
    if isinstance(value, (list, tuple)):
        return [_go_order(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    if value is MISSING:
        return None
    if hasattr(value, "as_dict"):
        return value.as_dict()
    raise TypeError(f"cannot encode {type(value).__name__}")


# ----- functions ------------------------------------------------------------

def _index(item: Any, *keys: Any) -> Any:
    for key in keys:
        if isinstance(item, dict):
            item = item.get(key, "")
        elif isinstance(item, (list, tuple, str)):
            if not isinstance(key, int) or not 0 <= key < len(item):
                raise TemplateError(f"error calling index: index out of range: {key}")
            item = item[key]
        elif item is None or item is MISSING:
            raise TemplateError("error calling index: index of untyped nil")
        else:
            raise TemplateError(f"error calling index: can't index item of type {type(item).__name__}")
    return item


def _len(item: Any) -> int:
    try:
        return len(item)
    except TypeError:
        raise TemplateError(f"error calling len: len of type {type(item).__name__}") from None


def _sprint(*args: Any) -> str:
    """Go's Sprint: a space between operands when neither side is a string."""
    out = ""
    for i, arg in enumerate(args):
        if i and not isinstance(arg, str) and not isinstance(args[i - 1], str):
            out += " "
        out += go_str(arg)
    return out


def _printf(fmt: str, *args: Any) -> str:
    """Go's Sprintf for the common verbs (%s %v %d %q %f %x, widths and `-`)."""
    import json
    import re

    it = iter(args)

    def verb(m: re.Match[str]) -> str:
        flags, width, prec, v = m.group(1), m.group(2), m.group(3), m.group(4)
        if v == "%":
            return "%"
        arg = next(it, MISSING)
        if v in "vs":
            text = go_str(arg)
        elif v == "q":
            text = json.dumps(go_str(arg), ensure_ascii=False)
        elif v in "dxXoeEfgG":
            text = ("%" + (prec or "") + v) % arg if isinstance(arg, (int, float)) else go_str(arg)
        else:
            text = go_str(arg)
        return ("%" + flags + (width or "") + "s") % text

    return re.sub(r"%([-+ 0#]*)(\d+)?(\.\d+)?([a-zA-Z%])", verb, fmt)


def _title(s: str) -> str:
    """Go's strings.Title: each word's first letter upper-cased, the rest left as they are."""
    import re

    return re.sub(r"\b[a-z]", lambda m: m.group().upper(), s)


def _compare(op: Callable[[Any, Any], bool]) -> Callable[..., bool]:
    def compare(a: Any, b: Any) -> bool:
        try:
            return op(a, b)
        except TypeError:
            raise TemplateError("error calling comparison: incompatible types for comparison") from None

    return compare


def _and(*args: Any) -> Any:
    for arg in args:
        if not truth(arg):
            return arg
    return args[-1]


def _or(*args: Any) -> Any:
    for arg in args:
        if truth(arg):
            return arg
    return args[-1]


def _truncate(s: Any, n: int) -> str:
    text = go_str(s)
    return text[:n] if len(text) > n else text


FUNCS: dict[str, Callable[..., Any]] = {
    "json": to_json,
    "join": lambda items, sep: sep.join(go_str(i) for i in (items or [])),
    "split": lambda s, sep: go_str(s).split(sep),
    "index": _index,
    "len": _len,
    "upper": lambda s: go_str(s).upper(),
    "lower": lambda s: go_str(s).lower(),
    "title": lambda s: _title(go_str(s)),
    "pad": lambda s, left, right: " " * left + go_str(s) + " " * right,
    "truncate": _truncate,
    "print": _sprint,
    "printf": _printf,
    "println": lambda *args: " ".join(go_str(a) for a in args) + "\n",
    "eq": lambda a, *bs: any(a == b for b in bs),
    "ne": lambda a, b: a != b,
    "lt": _compare(lambda a, b: a < b),
    "le": _compare(lambda a, b: a <= b),
    "gt": _compare(lambda a, b: a > b),
    "ge": _compare(lambda a, b: a >= b),
    "and": _and,
    "or": _or,
    "not": lambda a: not truth(a),
}


# ----- execution ------------------------------------------------------------

def _field(value: Any, name: str, args: list[Any]) -> Any:
    if isinstance(value, dict):
        if args:
            raise TemplateError(f"{name} is not a method but has arguments")
        return value.get(name, MISSING)
    if value is None or value is MISSING:
        raise TemplateError(f"nil pointer evaluating interface {{}}.{name}")
    if isinstance(value, (str, int, float, bool, list, tuple)) or name.startswith("_") or not hasattr(value, name):
        raise TemplateError(f"can't evaluate field {name} in type {_type_name(value)}")
    attr = getattr(value, name)
    if callable(attr):
        return attr(*args)
    if args:
        raise TemplateError(f"{name} is not a method but has arguments")
    return attr


def _type_name(value: Any) -> str:
    return {str: "string", int: "int", float: "float64", bool: "bool", list: "[]interface {}"}.get(
        type(value), type(value).__name__)


class Template:
    """A parsed template; `execute(data)` returns the rendered text."""

    def __init__(self, source: str, funcs: dict[str, Callable[..., Any]] | None = None) -> None:
        self.source = source
        self.funcs = {**FUNCS, **(funcs or {})}
        try:
            self.nodes = _Parser(source).parse()
        except TemplateError as exc:
            raise TemplateError(f"template parsing error: template: :1: {exc}") from None
        self._check_funcs(self.nodes)

    def _check_funcs(self, nodes: list[_Node]) -> None:
        def terms(pipe: _Pipeline) -> list[_Term]:
            out = [t for cmd in pipe.commands for t in cmd]
            return out + [t for p in out if p.kind == "paren" for t in terms(p.value)]

        for node in nodes:
            if node.pipe is not None:
                for term in terms(node.pipe):
                    if term.kind == "ident" and term.value not in self.funcs:
                        raise TemplateError(
                            f'template parsing error: template: :1: function "{term.value}" not defined')
            self._check_funcs(node.body)
            self._check_funcs(node.orelse)

    def execute(self, data: Any) -> str:
        out: list[str] = []
        try:
            self._run(self.nodes, data, [{"$": data}], out)
        except TemplateError as exc:
            raise TemplateError(f"template: :1: executing \"\": {exc}") from None
        return "".join(out)

    def _run(self, nodes: list[_Node], dot: Any, scopes: list[dict[str, Any]], out: list[str]) -> None:
        for node in nodes:
            if node.kind == "text":
                out.append(node.text)
            elif node.kind == "action":
                value = self._pipeline(node.piped, dot, scopes)
                if not node.piped.decl:
                    out.append(go_str(value))
            elif node.kind == "if":
                inner = [{}, *scopes]
                branch = node.body if truth(self._pipeline(node.piped, dot, inner)) else node.orelse
                self._run(branch, dot, inner, out)
            elif node.kind == "with":
                inner = [{}, *scopes]
                value = self._pipeline(node.piped, dot, inner)
                if truth(value):
                    self._run(node.body, value, inner, out)
                else:
                    self._run(node.orelse, dot, inner, out)
            elif node.kind == "range":
                self._range(node, dot, scopes, out)

    def _range(self, node: _Node, dot: Any, scopes: list[dict[str, Any]], out: list[str]) -> None:
        pipe = node.piped
        value = self._pipeline(_Pipeline(pipe.commands), dot, scopes)
        if isinstance(value, dict):
            items = [(k, value[k]) for k in sorted(value)]
        elif isinstance(value, (list, tuple)):
            items = list(enumerate(value))
        elif isinstance(value, int) and not isinstance(value, bool):
            items = [(i, i) for i in range(value)]
        elif value is None or value is MISSING:
            items = []
        else:
            raise TemplateError(f"range can't iterate over {go_str(value)}")
        if not items:
            self._run(node.orelse, dot, scopes, out)
        for key, elem in items:
            scope: dict[str, Any] = {}
            if len(pipe.decl) == 2:
                scope[pipe.decl[0]], scope[pipe.decl[1]] = key, elem
            elif pipe.decl:
                scope[pipe.decl[0]] = elem
            self._run(node.body, elem, [scope, *scopes], out)

    def _pipeline(self, pipe: _Pipeline, dot: Any, scopes: list[dict[str, Any]]) -> Any:
        value: Any = MISSING
        for i, command in enumerate(pipe.commands):
            value = self._command(command, dot, scopes, [] if i == 0 else [value])
        if pipe.decl:
            name = pipe.decl[-1]
            if pipe.assign:
                for scope in scopes:
                    if name in scope:
                        scope[name] = value
                        break
                else:
                    raise TemplateError(f"undefined variable: {name}")
            else:
                scopes[0][name] = value
        return value

    def _command(self, command: list[_Term], dot: Any, scopes: list[dict[str, Any]], piped: list[Any]) -> Any:
        head, rest = command[0], command[1:]
        if head.kind == "ident":
            args = [self._term(t, dot, scopes) for t in rest] + piped
            try:
                return self.funcs[head.value](*args)
            except TemplateError:
                raise
            except TypeError as exc:
                raise TemplateError(f"wrong number of args for {head.value}: {exc}") from None
        if head.kind in ("field", "var") and (rest or piped) and head.chain:
            args = [self._term(t, dot, scopes) for t in rest] + piped  # a method call: `.Label "k"`
            return self._term(head, dot, scopes, args)
        if rest or piped:
            raise TemplateError(f"can't give argument to non-function {self._describe(head)}")
        return self._term(head, dot, scopes)

    def _term(self, term: _Term, dot: Any, scopes: list[dict[str, Any]], args: list[Any] | None = None) -> Any:
        if term.kind == "lit":
            return term.value
        if term.kind == "ident":
            return self.funcs[term.value]()
        if term.kind == "dot" or term.kind == "field":
            value = dot
        elif term.kind == "var":
            for scope in scopes:
                if term.value in scope:
                    value = scope[term.value]
                    break
            else:
                raise TemplateError(f"undefined variable: {term.value}")
        else:
            value = self._pipeline(term.value, dot, scopes)
        for i, name in enumerate(term.chain):
            last = i == len(term.chain) - 1
            value = _field(value, name, (args or []) if last else [])
        return value

    @staticmethod
    def _describe(term: _Term) -> str:
        return {"dot": ".", "lit": go_str(term.value)}.get(term.kind, "." + ".".join(term.chain))


def render(source: str, data: Any, funcs: dict[str, Callable[..., Any]] | None = None) -> str:
    return Template(source, funcs).execute(data)
