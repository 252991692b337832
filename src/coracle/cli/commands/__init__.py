"""The verbs. Each is `def verb(cli, name, args) -> exit status`, parsing its own flags."""

from __future__ import annotations

import os
import sys

from coracle.cli.flags import Flags
from coracle.cli.runconfig import UsageError

TYPE_CHECKING = False  # typing is for checkers only: it costs start-up time
if TYPE_CHECKING:
    from typing import Any


class CommandError(Exception):
    """A failure the command explains itself (`Error: No such object: x`), with docker's exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _argparse_parser(**settings: Any) -> Any:
    """argparse with docker's wording and exit statuses (coracle.cli.usage), imported only when a
    command line needs it: see `coracle.cli.flags`."""
    import argparse

    from coracle.cli.usage import Parser

    def formatter(prog: str) -> argparse.HelpFormatter:
        """argparse's formatter at the width it would choose, found without importing shutil: argparse
        builds one per add_argument, and shutil drags bz2, lzma and fnmatch in."""
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

    return Parser(allow_abbrev=False, formatter_class=formatter, **settings)


def parser(name: str, usage: str, description: str = "", *, help_flag: bool = True) -> Flags:
    return Flags(lambda: _argparse_parser(prog=f"coracle {name}", usage=f"coracle {name} {usage}",
                                          description=description, add_help=help_flag))


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
