"""Exit records: `<exec-root>/monitor/exits/<id>.json`, one per reaped container or exec.

Why a file: whoever learns of an exit (the monitor, after draining the
process's last output; the keeper when no monitor runs) may have nobody to
tell. The record is written atomically before anyone is told, so a daemon that
was down, frozen or dropped reads it later and the exit code stays exact. The daemon removes a record once the
exit is applied to its state.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import TYPE_CHECKING

from coracle.clock import timestamp as utc_now

if TYPE_CHECKING:  # imported by the keeper, which stays small
    from typing import Any


def write_atomic(path: str, data: bytes) -> None:
    """Written whole, then renamed into place: a reader sees all of it or nothing.

    Not synced to disk: a record must outlive the processes that write and read
    it (daemon, monitor, keeper), which the page cache already guarantees; it
    need not outlive the kernel, since the containers it is about do not. A sync
    put a disk flush (milliseconds on a busy disk) between every exit and the
    daemon hearing of it, which `run --rm` and `wait` wait for.
    """
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, path)


def exit_code(status: int) -> int:
    """A wait status as Docker reports it: the code, or 128 + the signal that killed it."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def record(id_: str, kind: str, pid: int, code: int | None) -> dict[str, Any]:
    """An exit as recorded and as sent to listeners; code None: it ended, its status is unknown."""
    return {"id": id_, "kind": kind, "pid": pid, "exit_code": code, "finished_at": utc_now()}


def folder(exec_root: str) -> str:
    return os.path.join(exec_root, "monitor", "exits")


def write(exec_root: str, record: dict[str, Any]) -> None:
    """Persist one exit ({id, kind, pid, exit_code, finished_at}); raises OSError (e.g. disk full)."""
    write_atomic(os.path.join(folder(exec_root), f"{record['id']}.json"), json.dumps(record).encode())


def read_all(exec_root: str) -> list[dict[str, Any]]:
    """Every exit recorded and not yet applied by the daemon."""
    base = folder(exec_root)
    out = []
    for name in os.listdir(base) if os.path.isdir(base) else []:
        if name.endswith(".json"):
            try:
                with open(os.path.join(base, name)) as f:
                    out.append(json.load(f))
            except (OSError, ValueError):
                continue
    return out


def forget(exec_root: str, id_: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(folder(exec_root), f"{id_}.json"))
