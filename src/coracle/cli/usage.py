"""docker's usage errors for the native CLI, on argparse (imported only when a command line needs
argparse: help, an error, or a line the fast parser in `coracle.cli.flags` leaves to it)."""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from coracle.cli.commands import CommandError
from coracle.cli.runconfig import FlagError


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
