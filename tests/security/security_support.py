"""Real containers for security tests, built the way the engine builds them (helpers).

`Containers.run()` does what Engine.start does around the runtime: the Spec
gets its security fields from `coracle.engine.security_options.apply` (Docker's
HostConfig in, as the API receives it), the monitor forks and holds the
process, it is put into a private cgroup with its limits and device rules,
then released. Output comes from the json-file log the monitor writes.

Everything is private to the test: monitor, exec root, cgroup parent; the
teardown kills the monitor and every container process (they are reparented,
not killed, when the monitor dies) and removes the cgroups.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Callable


import docker

from coracle import cgroups
from coracle.cgroups import Resources
from coracle.cgroups.devices import DeviceRule
from coracle.engine import security_options
from coracle.runtime.client import MonitorClient
from coracle.runtime.spec import Process, Spec
from harness import kill_cgroup_tree

# A setuid-root busybox; /etc/busybox.conf makes its grep and id applets keep root
# (busybox drops a setuid gain for applets not listed there).
SUID_BUSYBOX = "/suid/busybox"

@dataclass
class Result:
    exit_code: int
    output: str
    spec: Spec


class Containers:
    def __init__(self, base: Path, lower: Path, parent: str) -> None:
        self.base, self.lower, self.parent = base, lower, parent
        self.monitor = MonitorClient(str(base / "exec"))
        self.monitor_pid = self.monitor.ensure_running()
        self.count = 0

    def spec(self, args: list[str], host_config: dict[str, Any] | None = None, user: str = "",
             daemon_no_new_privs: bool = False) -> Spec:
        self.count += 1
        n = self.count
        dirs = {k: self.base / f"{k}{n}" for k in ("upper", "work", "rootfs")}
        for d in dirs.values():
            d.mkdir()
        hc = {"NetworkMode": "bridge", **(host_config or {})}
        spec = Spec(id=f"sec{n}", process=Process(args=args, env=["PATH=/bin"], user=user), hostname=f"box{n}",
                    rootfs=str(dirs["rootfs"]), lower=[str(self.lower)], upper=str(dirs["upper"]),
                    work=str(dirs["work"]), log_path=str(self.base / f"sec{n}.log"))
        if hc["NetworkMode"] == "host":
            spec.namespaces.remove("net")
        security_options.apply(spec, hc, daemon_no_new_privs)
        return spec

    def run(self, args: list[str], host_config: dict[str, Any] | None = None, user: str = "",
            daemon_no_new_privs: bool = False, resources: Resources | None = None,
            during: Callable[[int], None] | None = None, timeout: float = 30) -> Result:
        """Run a container to its end; `during(pid)` runs while it is held, before release."""
        spec = self.spec(args, host_config, user, daemon_no_new_privs)
        sock, pid = self.monitor.spawn(spec)
        cg = cgroups.manager_for(f"{self.parent}/{spec.id}")
        try:
            cg.create()
            cg.apply(pid)
            cg.set(resources or Resources())
            cg.set_devices([DeviceRule.from_json(r) for r in spec.device_rules])
            if during:
                during(pid)
            self.monitor.release(sock, spec.id)
            code = self._wait_exit(spec.id, timeout)
        finally:
            cg.destroy()
        log = Path(spec.log_path)
        text = "".join(json.loads(line)["log"] for line in log.read_text().splitlines()) if log.exists() else ""
        return Result(code, text, spec)

    def _wait_exit(self, id_: str, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in self.monitor.exit_records():
                if record["id"] == id_:
                    self.monitor.forget_exit(id_)
                    return record["exit_code"]
            time.sleep(0.02)
        raise AssertionError(f"container {id_} did not exit within {timeout}s")

    def close(self) -> None:
        try:
            procs = self.monitor.list()
        except OSError:
            procs = []
        for proc in procs:
            with contextlib.suppress(ProcessLookupError, KeyError):
                os.kill(proc["pid"], signal.SIGKILL)
        for pid in (self.monitor.keeper_pid(), self.monitor_pid):  # the keeper first: it restarts the monitor
            try:
                if pid:
                    os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        kill_cgroup_tree(self.parent)


def caps(output: str, field: str = "CapEff") -> int:
    """A capability mask from `grep Cap /proc/self/status` output."""
    for line in output.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1], 16)
    raise AssertionError(f"{field} not in output:\n{output}")


def run_script(client: docker.DockerClient, script: str, **kw: Any) -> str:
    """A busybox shell script's output (stderr included) from a container removed afterwards."""
    return client.containers.run("busybox", ["sh", "-c", f"{{ {script}; }} 2>&1; true"], remove=True, **kw).decode()
