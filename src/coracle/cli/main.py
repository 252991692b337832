"""`coracle`: docker's verbs over the Engine API.

Start-up cost matters (`coracle ps` in a loop): only the chosen verb's module
is imported and only its parser is built; the HTTP client loads on first use.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing is for checkers only: it costs start-up time
if TYPE_CHECKING:
    from typing import Any, NoReturn
    from collections.abc import Callable

# verb -> "module:function"; modules live in coracle.cli.commands
_CONTAINER = {
    "run": "containers:run", "create": "containers:create", "start": "containers:start",
    "stop": "containers:stop", "kill": "containers:kill", "restart": "containers:restart",
    "rm": "containers:rm", "pause": "containers:pause", "unpause": "containers:unpause",
    "wait": "containers:wait", "rename": "containers:rename", "logs": "containers:logs",
    "top": "containers:top", "ps": "containers:ps", "port": "containers:port", "stats": "containers:stats",
    "cp": "containers:cp", "diff": "containers:diff", "export": "containers:export", "update": "containers:update",
    "attach": "containers:attach", "exec": "containers:exec_",
    "commit": "images:commit", "prune": "containers:prune",
}
_IMAGE = {
    "ls": "images:images", "rm": "images:rmi", "prune": "images:prune", "history": "images:history",
    "tag": "images:tag", "import": "images:import_", "load": "images:load", "save": "images:save",
    "pull": "images:pull", "push": "images:push", "build": "build:build",
}
_NETWORK = {
    "create": "networks:create", "ls": "networks:ls", "inspect": "networks:inspect", "rm": "networks:rm",
    "prune": "networks:prune", "connect": "networks:connect", "disconnect": "networks:disconnect",
}
_VOLUME = {"create": "volumes:create", "ls": "volumes:ls", "inspect": "volumes:inspect", "rm": "volumes:rm",
           "prune": "volumes:prune"}
_SYSTEM = {"df": "system:df", "prune": "system:prune", "check": "system:check", "info": "system:info",
           "events": "system:events"}
_ALIASES = {"list": "ls", "remove": "rm", "ps": "ls"}

GROUPS: dict[str, dict[str, str]] = {
    "container": {**_CONTAINER, "ls": "containers:ps", "inspect": "containers:inspect"},
    "image": {**_IMAGE, "inspect": "images:inspect"},
    "network": _NETWORK,
    "volume": _VOLUME,
    "system": _SYSTEM,
    "builder": {"build": "build:build", "prune": "build:prune"},
    "manifest": {"inspect": "manifests:inspect"},
}
TOP: dict[str, str] = {
    **{k: v for k, v in _CONTAINER.items() if k != "prune"},
    "images": "images:images", "rmi": "images:rmi", "tag": "images:tag", "pull": "images:pull",
    "push": "images:push", "import": "images:import_", "load": "images:load", "save": "images:save",
    "history": "images:history", "build": "build:build", "login": "images:login", "logout": "images:logout",
    "search": "images:search",
    "inspect": "system:inspect", "version": "system:version", "info": "system:info", "events": "system:events",
}

USAGE = """Usage:  coracle [OPTIONS] COMMAND

A fast client for the Docker Engine API (coracled, or any daemon speaking it)

Options:
  -H, --host string   Daemon socket to connect to (env CORACLE_HOST, default unix:///run/coracle/coracle.sock)
  -v, --version       Print version information and quit

Management Commands:
  container   Manage containers
  image       Manage images
  builder     Manage builds (build, prune)
  manifest    Inspect image manifests and manifest lists in a registry
  network     Manage networks
  volume      Manage volumes
  system      Manage coracle (df, prune, check, info, events)

Commands:
  attach  build  commit  cp  create  diff  events  exec  export  history  images  import  info
  inspect  kill  load  login  logout  logs  pause  port  ps  pull  push  rename  restart  rm  rmi
  run  save  search  start  stats  stop  tag  top  unpause  update  version  wait

Run 'coracle COMMAND --help' for more information on a command.
"""


class Cli:
    """What every command gets: the daemon address, a lazily created client, and output helpers."""

    def __init__(self, host: str | None) -> None:
        self.host = host
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from coracle.cli.client import Client

            self._client = Client(self.host)
        return self._client

    @staticmethod
    def out(text: str) -> None:
        sys.stdout.write(text)

    @staticmethod
    def err(text: str) -> None:
        sys.stderr.write(text if text.endswith("\n") else text + "\n")


def _resolve(argv: list[str]) -> tuple[str, str, list[str]] | None:
    """(command name for messages, "module:function", remaining args) or None for unknown."""
    if not argv:
        return None
    verb, rest = argv[0], argv[1:]
    if verb in GROUPS:
        if not rest or rest[0] in ("-h", "--help"):
            return verb, "", rest
        sub = _ALIASES.get(rest[0], rest[0])
        target = GROUPS[verb].get(sub)
        return (f"{verb} {sub}", target, rest[1:]) if target else None  # docker names an alias's verb
    target = TOP.get(verb)
    return (verb, target, rest) if target else None


def _group_help(group: str) -> str:
    names = "\n".join(f"  {name}" for name in sorted(GROUPS[group]))
    return (f"\nUsage:  coracle {group} COMMAND\n\nCommands:\n{names}\n\n"
            f"Run 'coracle {group} COMMAND --help' for more information on a command.\n")


def main(argv: list[str] | None = None) -> NoReturn:
    """Run the command, then leave without the interpreter's teardown.

    Why: freeing every module and object at exit costs ~10 ms of CPU (a fifth of a
    `run --rm` in this process) for a command that is done. Every verb closes what it
    writes before it returns and its threads are daemons, so once stdout and stderr are
    flushed nothing is lost; a flush that fails (a closed pipe) takes the normal way out,
    which reports it as before, and so does a run under a profiler.
    """
    code = run(sys.argv[1:] if argv is None else argv)
    if sys.getprofile() or sys.gettrace():
        sys.exit(code)  # a profiler or debugger running us writes its results at the teardown
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        sys.exit(code)
    os._exit(code)


def run(argv: list[str]) -> int:
    host = None
    while argv and argv[0].startswith("-"):
        flag = argv.pop(0)
        if flag in ("-H", "--host") and argv:
            host = argv.pop(0)
        elif flag.startswith("--host="):
            host = flag.split("=", 1)[1]
        elif flag in ("-h", "--help"):
            sys.stdout.write(USAGE)
            return 0
        elif flag in ("-v", "--version"):
            from coracle import __version__

            sys.stdout.write(f"coracle version {__version__}\n")
            return 0
        elif flag in ("-D", "--debug"):
            continue
        else:
            sys.stderr.write(f"unknown flag: {flag}\nSee 'coracle --help'.\n")
            return 125
    resolved = _resolve(argv)
    if resolved is None:
        if not argv:
            sys.stdout.write(USAGE)
            return 0
        unknown = " ".join(argv[:2]) if argv[0] in GROUPS else argv[0]
        sys.stderr.write(f"coracle: '{unknown}' is not a coracle command.\nSee 'coracle --help'\n")
        return 1
    name, target, rest = resolved
    if not target:
        sys.stdout.write(_group_help(name))
        return 0
    module_name, func_name = target.split(":")
    module_path = f"coracle.cli.commands.{module_name}"
    __import__(module_path)  # importlib.import_module would cost importlib itself
    module = sys.modules[module_path]
    command: Callable[[Cli, str, list[str]], int] = getattr(module, func_name)
    cli = Cli(host)
    return guarded(command, cli, name, rest)


def guarded(command: Callable[[Cli, str, list[str]], int], cli: Cli, name: str, args: list[str]) -> int:
    """Run a command and turn every failure into docker's one-line message and exit status."""
    from coracle.cli.client import ApiError, DaemonUnreachable
    from coracle.cli.commands import CommandError
    from coracle.cli.runconfig import FlagError, UsageError

    runs = name.split()[-1] == "run"  # docker says "docker: ..." and exits 125 for run (create: 1, plainly)
    prefix, status = ("coracle: ", 125) if runs else ("", 1)
    try:
        return command(cli, name, args)
    except FlagError as exc:  # explained in docker's words by the parser
        cli.err(str(exc))
        return 125
    except UsageError as exc:
        cli.err(f"coracle: {exc}\nSee 'coracle {name} --help'.")
        return 125
    except ApiError as exc:
        cli.err(f"{prefix}Error response from daemon: {exc.message}")
        return status
    except DaemonUnreachable as exc:
        cli.err(f"{prefix}{exc}")
        return status
    except CommandError as exc:
        cli.err(str(exc))
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`coracle ps | head`): quietly, like docker
        try:  # noqa: SIM105  (contextlib stays off the CLI's start path)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return 0
    except Exception as exc:
        # A template error, looked up only now: commands that format import the Go-template engine
        # themselves, and every other command starts without it.
        templates = sys.modules.get("coracle.cli.gotemplate")
        if templates is None or not isinstance(exc, templates.TemplateError):
            raise
        cli.err(str(exc))
        return 1
    finally:
        if cli._client is not None:
            cli._client.close()


if __name__ == "__main__":
    main()
