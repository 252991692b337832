"""The CLI's own flag parsing gives exactly what argparse gives for the same declarations, and
leaves help, errors and unusual command lines to argparse itself."""

from __future__ import annotations

from typing import Any

import pytest

from coracle.cli.commands import CommandError, parser
from coracle.cli.flags import REMAINDER, Flags
from coracle.cli.runconfig import UsageError, add_container_flags


def run_flags() -> Flags:
    p = parser("run", "[OPTIONS] IMAGE [COMMAND] [ARG...]", help_flag=False)
    p.add_argument("-d", "--detach", action="store_true")
    p.add_argument("--sig-proxy", default="true")
    add_container_flags(p)
    return p


def build_flags() -> Flags:
    p = parser("build", "[OPTIONS] PATH | -")
    p.add_argument("-t", "--tag", action="append", default=[])
    p.add_argument("-f", "--file")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--rm", nargs="?", const="true", default="true")
    p.add_argument("--shm-size", type=int)
    p.add_argument("--progress", choices=("auto", "plain", "tty"), default="auto")
    p.add_argument("path")
    return p


def list_flags() -> Flags:
    p = parser("rm", "[OPTIONS] CONTAINER [CONTAINER...]")
    p.add_argument("-f", "--force", action="store_true")
    p.add_argument("-v", "--volumes", action="store_true")
    p.add_argument("containers", nargs="+")
    return p


def both(flags: Flags, argv: list[str]) -> tuple[Any, Any]:
    """(what the CLI's parser made, what argparse made), as plain dicts; an error counts as its message."""
    def outcome(parse: Any) -> Any:
        try:
            return vars(parse(list(argv)))
        except (UsageError, CommandError) as exc:  # a flag error, or a wrong count of arguments
            return f"error: {exc}"
    return outcome(flags.parse_args), outcome(flags.argparse().parse_args)


@pytest.mark.parametrize("make, argv", [
    (run_flags, ["--rm", "--network", "none", "busybox", "true"]),
    (run_flags, ["-d", "--name=web", "-p", "80:80", "-p", "443:443", "-e", "A=1", "nginx"]),
    (run_flags, ["-it", "--rm", "busybox", "sh", "-c", "echo -n hi --rm"]),
    (run_flags, ["--oom-score-adj", "5", "--cpu-shares", "512", "--pull", "never", "img"]),
    (run_flags, ["busybox", "--", "ls", "-l"]),
    (run_flags, ["busybox"]),
    (run_flags, ["-m", "64m", "-", "x"]),
    # left to argparse: its own rules or its own words
    (run_flags, ["--pids-limit", "-1", "busybox"]),
    (run_flags, ["--cpu-shares", "many", "busybox"]),
    (run_flags, ["--pull", "sometimes", "busybox"]),
    (run_flags, ["--bogus", "busybox"]),
    (run_flags, ["-dx", "busybox"]),
    (run_flags, ["--rm=yes", "busybox"]),
    (run_flags, ["--name"]),
    (run_flags, []),
    (build_flags, ["-t", "a:1", "--tag=b", "--no-cache", "."]),
    (build_flags, ["--rm", "false", "ctx"]),
    (build_flags, ["--rm", "-t", "x", "ctx"]),
    (build_flags, ["--rm", "ctx"]),
    (build_flags, ["--shm-size", "64", "--progress", "plain", "-"]),
    (build_flags, [".", "-t", "late"]),
    (build_flags, ["-tshort", "."]),
    (build_flags, ["a", "b"]),
    (list_flags, ["-fv", "a", "b", "c"]),
    (list_flags, ["a", "-f"]),
    (list_flags, ["-f"]),
])
def test_same_namespace_as_argparse(make: Any, argv: list[str]) -> None:
    ours, theirs = both(make(), argv)
    assert ours == theirs


def test_help_is_argparse_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_flags().parse_args(["--help"])
    assert "--no-cache" in capsys.readouterr().out


def test_declarations_it_cannot_read_always_go_to_argparse() -> None:
    p = parser("x", "")
    p.add_argument("--level", action="count", default=0)
    p.add_argument("rest", nargs=REMAINDER)
    assert vars(p.parse_args(["--level", "--level", "a"])) == {"level": 2, "rest": ["a"]}


@pytest.mark.parametrize("make, argv", [
    (run_flags, ["--rm", "--network", "none", "busybox", "true"]),
    (run_flags, ["-it", "--rm", "-e", "A=1", "busybox", "sh", "-c", "echo --rm"]),
    (build_flags, ["-t", "a:1", "--rm", "false", "--progress=plain", "."]),
    (list_flags, ["-fv", "a", "b"]),
])
def test_everyday_command_lines_need_no_argparse(make: Any, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    flags = make()
    monkeypatch.setattr(flags, "argparse", lambda: pytest.fail("argparse was needed"))
    assert flags.parse_args(argv)
