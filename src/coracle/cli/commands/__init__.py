"""The verbs. Each is `def verb(cli, name, args) -> exit status`, parsing its own flags."""

from __future__ import annotations

import argparse
import os
import sys

from coracle.cli.runconfig import FlagError, UsageError

TYPE_CHECKING = False  # typing is for checkers only: it costs start-up time
if TYPE_CHECKING:
    from typing import Any, NoReturn


class CommandError(Exception):
    """A failure the command explains itself (`Error: No such object: x`), with docker's exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class Parser(argparse.ArgumentParser):
    """argparse with docker's error wording and exit statuses instead of usage + 2: a wrong number of
    arguments exits 1 with docker's "requires N arguments" and the usage, a flag error exits 125.

    `counts` (least, most) overrides the positionals' count argparse would infer, for verbs whose
    last positional is a command taken whole (exec's `CONTAINER COMMAND [ARG...]`)."""

    counts: tuple[int, int | None] | None = None
    _given: list[str] = []

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._given = list(args or [])
        return super().parse_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        unknown = self._unknown_flag()  # docker reports a flag it does not know before any count
        if unknown is None and message.startswith("the following arguments are required: "):
            self.wrong_count(*self._arity())
        if unknown is None and message.startswith("unrecognized arguments: "):
            self.wrong_count(*self._arity())  # a positional too many (an unknown flag was found above)
        if unknown is not None:
            message = (f"unknown flag: {unknown}" if unknown.startswith("--")
                       else f"unknown shorthand flag: '{unknown[1]}' in {unknown}")
        raise FlagError(self._explained(message, "Run"))

    def _explained(self, message: str, verb: str) -> str:
        """docker's usage error: the message, the usage line, where to read more."""
        return f"{message}\n\nUsage:  {self.usage}\n\n{verb} '{self.prog} --help' for more information"

    def _unknown_flag(self) -> str | None:
        """The first argument that looks like a flag and names none of this verb's (before `--`)."""
        for arg in self._given:
            if arg == "--":
                return None
            if not arg.startswith("-") or arg == "-" or arg[1:].isdigit():
                continue
            name = arg.split("=", 1)[0]
            if name not in self._option_string_actions and arg[:2] not in self._option_string_actions:
                return name
        return None

    def require(self, given: int) -> None:
        """After parsing, for a verb whose positionals argparse cannot count (`counts`, or one of two
        optional ones): docker's error unless the number given is within them."""
        least, most = self._arity()
        if given < least or (most is not None and given > most):
            self.wrong_count(least, most)

    def wrong_count(self, least: int, most: int | None) -> NoReturn:
        """docker's cobra message: `docker: 'docker stop' requires at least 1 argument`, the usage, and
        `See` (for at least N) or `Run` (otherwise) 'docker stop --help', exit status 1."""
        def arguments(n: int) -> str:
            return f"{n} argument" + ("" if n == 1 else "s")

        if most == 0:
            wanted, verb = "accepts no arguments", "Run"
        elif most is None:
            wanted, verb = f"requires at least {arguments(least)}", "See"
        elif least == most:
            wanted, verb = f"requires {arguments(least)}", "Run"
        elif least == 0:
            wanted, verb = f"requires at most {arguments(most)}", "Run"
        else:
            wanted, verb = f"requires at least {least} and at most {arguments(most)}", "Run"
        raise CommandError(self._explained(f"coracle: '{self.prog}' {wanted}", verb), 1)

    def _arity(self) -> tuple[int, int | None]:
        """The least and most positionals the parser takes (most None: no limit)."""
        if self.counts is not None:
            return self.counts
        least, most = 0, 0  # type: tuple[int, int | None]
        for action in self._get_positional_actions():
            nargs = action.nargs
            if nargs is None or isinstance(nargs, int):
                least += nargs or 1
                most = None if most is None else most + (nargs or 1)
            elif nargs == "?":
                most = None if most is None else most + 1
            else:  # "*", "+", REMAINDER
                least += nargs == "+"
                most = None
        return least, most


def _formatter(prog: str) -> argparse.HelpFormatter:
    """argparse's formatter at the width it would choose, found without importing shutil: argparse
    builds one per add_argument, and shutil drags bz2, lzma and fnmatch into every command's start."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            # sys.__stdout__ is None without a stdout: the AttributeError is caught below
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return argparse.HelpFormatter(prog, width=(columns or 80) - 2)


def parser(name: str, usage: str, description: str = "", *, help_flag: bool = True) -> Parser:
    return Parser(prog=f"coracle {name}", usage=f"coracle {name} {usage}", description=description,
                  add_help=help_flag, allow_abbrev=False, formatter_class=_formatter)


def save_stream(resp: Any, target: str | None) -> None:
    """A tar the daemon streams (save, export) to the file `target` (written whole, then
    renamed into place) or to stdout, which must not be a terminal (docker's refusal)."""
    if not target and sys.stdout.isatty():
        raise CommandError("Cowardly refusing to save to a terminal. Use the -o flag or redirect", 1)
    out = open(target + ".tmp", "wb") if target else sys.stdout.buffer  # noqa: SIM115  (or stdout, not closed)
    try:
        while chunk := resp.read1(1 << 20):
            out.write(chunk)
    finally:
        if target:
            out.close()
    if target:
        os.replace(target + ".tmp", target)


def filters(items: list[str]) -> dict[str, list[str]] | None:
    """`--filter k=v` (repeatable) -> the API's {"k": ["v", ...]}."""
    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError("bad format of filter (expected name=value)")
        out.setdefault(key.strip(), []).append(value)
    return out or None


def confirm(question: str) -> bool:
    """docker's prompt: anything but y/yes declines; no terminal declines."""
    sys.stdout.write(f"{question} [y/N] ")
    sys.stdout.flush()
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def each(cli: Any, names: list[str], action: Any, failed_prefix: str | None = None) -> int:
    """Apply `action` to every name, printing the name on success and the daemon's error otherwise."""
    from coracle.cli.client import ApiError

    failed = []
    for name in names:
        try:
            action(name)
        except ApiError as exc:
            cli.err(f"Error response from daemon: {exc.message}")
            failed.append(name)
            continue
        cli.out(name + "\n")
    if failed and failed_prefix:
        cli.err(f"Error: {failed_prefix}: {', '.join(failed)}")
    return 1 if failed else 0


def print_json(cli: Any, objects: list[Any]) -> None:
    """docker inspect's raw output: a JSON array indented with 4 spaces."""
    import json

    cli.out(json.dumps(objects, indent=4, ensure_ascii=False) + "\n")


def template_each(cli: Any, fmt: str, objects: list[Any]) -> None:
    from coracle.cli.gotemplate import Template

    template = Template(fmt.replace("\\t", "\t").replace("\\n", "\n"))
    cli.out("".join(template.execute(obj) + "\n" for obj in objects))
