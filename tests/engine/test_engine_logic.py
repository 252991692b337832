"""The engine's decisions, without root: names, states, restart policies, undo and networks.

The engine runs as in the daemon, with its store, record index, events and
volumes, over stand-ins for what needs root: the monitor forks an ordinary
`sleep` as the container's PID 1 (so signals, /proc start times and exits are
real), the network layer answers requests from memory, and the cgroups are a
journal of calls. What a user would notice is asserted: the state `inspect`
shows, the events `docker events` streams, the error a client gets, and that a
failed start leaves no process, cgroup or endpoint behind.
"""

from __future__ import annotations

import builtins
import socket
import subprocess
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from coracle import cgroups
from coracle.cgroups import Resources
from coracle.cgroups.devices import DeviceRule
from coracle.engine.container import Container, HostSettings, Layers, NetworkSettings, Private, State
from coracle.engine.engine import Engine
from coracle.engine.restart import RestartTracker, comes_back_at_boot, wants_restart
from coracle.errors import Conflict, InvalidParameter, NotFound, NotModified, SystemError_
from coracle.events import EventBus
from coracle.images import Image, ImageStore
from coracle.network.driver import (
    Attachment,
    ContainerFiles,
    ContainerNetworkRequest,
    Disconnection,
    EndpointOptions,
)
from coracle.network.manager import Adoption, Connection
from coracle.runtime.client import MonitorClient, StartError
from coracle.runtime.spec import Spec
from coracle.store import Store

IMAGE = Image(id="sha256:" + "1" * 64, config={"Cmd": ["sleep", "1000"], "Env": ["PATH=/bin"]},
              repo_tags=["busybox:latest"], layers=[], created="2024-01-01T00:00:00Z", size=0)


class Images:
    """One image, busybox, with no layers."""

    def resolve(self, ref: str) -> Image:
        if ref not in ("busybox", "busybox:latest", IMAGE.id):
            raise NotFound(f"No such image: {ref}")
        return IMAGE

    def layer_path(self, diff_id: str) -> Path:
        return Path("/nonexistent") / diff_id

    def layer_dirs(self, image: Image) -> list[str]:
        return []


class Monitor:
    """Forks `sleep` as PID 1 and reports its exit the way the monitor does."""

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.abandoned: list[str] = []
        self.stopped = False

    def spawn(self, spec: Spec) -> tuple[socket.socket, int]:
        if self.stopped:  # a restart policy firing after the test: no PID 1 may outlive it
            raise StartError("the monitor stopped", 128)
        proc = subprocess.Popen(["sleep", "1000"])
        self.procs[spec.id] = proc
        mine, theirs = socket.socketpair()
        theirs.close()
        return mine, proc.pid

    def release(self, sock: socket.socket, id_: str) -> None:
        sock.close()
        proc = self.procs[id_]
        threading.Thread(target=self._reap, args=(id_, proc), daemon=True).start()

    def _reap(self, id_: str, proc: subprocess.Popen[bytes]) -> None:
        code = proc.wait()
        assert self.engine is not None
        self.engine.on_monitor_event({"id": id_, "kind": "container", "pid": proc.pid,
                                      "exit_code": 128 - code if code < 0 else code, "finished_at": ""})

    def abandon(self, sock: socket.socket | None, id_: str) -> None:
        self.abandoned.append(id_)
        proc = self.procs.pop(id_)
        proc.kill()
        proc.wait()

    def forget_exit(self, id_: str) -> None:
        pass

    def stage_spare(self, dirs: list[str]) -> bool:
        return False  # no spare child here: every start moves its PID 1

    def list(self) -> list[dict[str, Any]]:
        return [{"id": cid, "pid": p.pid, "state": "running", "kind": "container"}
                for cid, p in self.procs.items() if p.poll() is None]

    def exit_records(self) -> builtins.list[dict[str, Any]]:
        return []

    def stop_all(self) -> None:
        self.stopped = True
        for proc in self.procs.values():
            proc.kill()
            proc.wait()


class Cgroup(cgroups.Manager):
    """A cgroup that only writes down what was done to it."""

    journal: list[tuple[str, str]]

    def _note(self, op: str) -> None:
        self.journal.append((op, self.path))

    def dirs(self) -> list[str]:
        return []

    def create(self) -> None:
        self._note("create")

    def destroy(self) -> None:
        self._note("destroy")

    def apply(self, pid: int) -> None:
        self._note("apply")

    def set(self, r: Resources) -> None:
        self._note("set")

    def update(self, r: Resources) -> None:
        self._note("update")

    def set_devices(self, rules: list[DeviceRule]) -> None:
        pass

    def freeze(self) -> None:
        self._note("freeze")

    def thaw(self) -> None:
        self._note("thaw")

    def oom_killed(self) -> bool:
        return False

    def stats(self) -> dict[str, Any]:
        return {}

    def procs(self) -> list[int]:
        return []

    def _file(self, controller: str, name: str, what: str) -> str:
        raise NotImplementedError

    def _write_memory(self, r: Resources, fresh: bool) -> None:
        raise NotImplementedError

    def _write_cpu(self, r: Resources) -> None:
        raise NotImplementedError

    def _write_io_weight(self, weight: int) -> None:
        raise NotImplementedError


@dataclass
class Networks:
    """The network layer from memory: a user network "mynet" besides the builtin ones."""

    known: tuple[str, ...] = ("bridge", "host", "none", "mynet")
    fail_attach: bool = False
    wired: set[str] = field(default_factory=set)
    detached: list[str] = field(default_factory=list)

    def validate(self, request: ContainerNetworkRequest) -> None:
        for ref in [request.mode.name, *(o.network for o in request.endpoints)]:
            if ref and ref not in self.known:
                raise NotFound(f"network {ref} not found")

    def attach(self, request: ContainerNetworkRequest) -> Attachment:
        if self.fail_attach:
            raise SystemError_("cannot create the veth: no space left on device")
        self.wired.add(request.container_id)
        names = dict.fromkeys([request.mode.name, *(o.network for o in (*request.endpoints, *request.connected))])
        networks = {name: {"NetworkID": name, "EndpointID": "ep-" + name, "IPAddress": "10.0.0.2",
                           "Gateway": "10.0.0.1", "MacAddress": "02:42:0a:00:00:02", "DNSNames": [request.name]}
                    for name in names}
        return Attachment({"Networks": networks, "IPAddress": "10.0.0.2", "Ports": {}},
                          files=ContainerFiles("h\n", "127.0.0.1 localhost\n", "nameserver 10.0.0.1\n"))

    def detach(self, container_id: str) -> None:
        self.wired.discard(container_id)
        self.detached.append(container_id)

    def connect(self, request: ContainerNetworkRequest, network_ref: str, options: EndpointOptions) -> Connection:
        if network_ref not in self.known:
            raise NotFound(f"network {network_ref} not found")
        if network_ref in {o.network for o in request.connected}:
            raise Conflict(f"endpoint with name {request.name} already exists in network {network_ref}")
        return Connection(network_ref, network_ref, {"NetworkID": network_ref, "Aliases": list(options.aliases)})

    def disconnect(self, request: ContainerNetworkRequest, network_ref: str, force: bool = False
                   ) -> Disconnection:
        refs = tuple(dict.fromkeys(o.network for o in (*request.endpoints, *request.connected)
                                   if o.network == network_ref))
        if not refs:
            raise Conflict(f"container {request.container_id} is not connected to network {network_ref}")
        return Disconnection(network_ref, network_ref, refs, {})

    def rename(self, request: ContainerNetworkRequest, old_name: str) -> dict[str, list[str]]:
        """Names of its endpoints: a container that is not wired has none (the manager's rule)."""
        wired = request.container_id in self.wired
        return {o.network: [request.name] for o in request.connected if wired}

    def files(self, request: ContainerNetworkRequest, settings: Mapping[str, Any] | None) -> ContainerFiles:
        return ContainerFiles("h\n", "", "")

    def reconcile(self, live: dict[str, int], dry_run: bool = False) -> dict[str, list[Any]]:
        return {}

    def adopt(self, request: ContainerNetworkRequest, settings: Mapping[str, Any], pid: int,
              dry_run: bool = False) -> Adoption:
        return Adoption()

    def replumb(self, cid: str, pid: int, dry_run: bool = False) -> list[str]:
        return []

    def prune_partial(self, cid: str, keep: set[str], dry_run: bool = False) -> list[str]:
        return []


@dataclass
class Rig:
    engine: Engine
    monitor: Monitor
    network: Networks
    journal: list[tuple[str, str]]
    events: EventBus

    def actions(self, cid: str) -> list[str]:
        return [e["Action"] for e in self.events.history if e["Actor"]["ID"] == cid]

    def create(self, name: str | None = None, **body: Any) -> str:
        return str(self.engine.create({"Image": "busybox", **body}, name)["Id"])

    def wait_state(self, cid: str, ready: Any) -> Container:
        """The record once `ready(record)` holds: exits and restarts arrive from other threads."""
        for _ in range(500):
            c = self.engine.container(cid)
            if ready(c):
                return c
            threading.Event().wait(0.01)
        raise AssertionError(f"container {cid} never reached the state: {self.engine.container(cid).state}")


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    journal: list[tuple[str, str]] = []

    def cgroup_for(path: str) -> cgroups.Manager:
        cg = Cgroup(path)
        cg.journal = journal
        return cg

    monitor, network, events = Monitor(), Networks(), EventBus()
    engine = Engine(store=Store(tmp_path / "store.db"), images=cast(ImageStore, Images()), network=network,
                    monitor=cast(MonitorClient, monitor), events=events, data_root=str(tmp_path / "data"),
                    exec_root=str(tmp_path / "run"), cgroups_for=cgroup_for)
    monitor.engine = engine
    try:
        yield Rig(engine, monitor, network, journal, events)
    finally:
        engine.health.close()
        monitor.stop_all()


def _undone(journal: list[tuple[str, str]]) -> list[str]:
    """cgroups created and not destroyed since."""
    alive: list[str] = []
    for op, path in journal:
        if op == "create":
            alive.append(path)
        elif op == "destroy" and path in alive:
            alive.remove(path)
    return alive


# ----- names ---------------------------------------------------------------------------

def test_a_taken_name_is_refused_with_the_holder_named(rig: Rig) -> None:
    first = rig.create("web")
    with pytest.raises(Conflict) as refused:
        rig.create("web")
    assert f'"/web" is already in use by container "{first}"' in str(refused.value)
    assert [c.name for c in rig.engine.containers()] == ["/web"]


def test_a_bad_name_is_refused_and_nothing_is_kept(rig: Rig) -> None:
    with pytest.raises(InvalidParameter):
        rig.create("no/slashes")
    assert rig.engine.containers() == []
    assert not any(Path(rig.engine.containers_dir).iterdir())


def test_rename_moves_the_name_and_the_dns_names(rig: Rig) -> None:
    cid = rig.create("old", HostConfig={"NetworkMode": "mynet"})
    rig.create("taken")
    with pytest.raises(Conflict):
        rig.engine.rename(cid, "taken")
    with pytest.raises(InvalidParameter):
        rig.engine.rename(cid, "old")
    rig.engine.start(cid)
    rig.engine.rename(cid, "new")
    renamed = rig.engine.container("new")
    assert renamed.id == cid and renamed.networks["mynet"].stored()["DNSNames"] == ["new"]
    assert rig.actions(cid)[-1] == "rename"
    assert rig.events.history[-1]["Actor"]["Attributes"]["oldName"] == "/old"
    assert rig.create("old")  # the old name is free again


# ----- states --------------------------------------------------------------------------

def test_start_stop_and_start_again(rig: Rig) -> None:
    cid = rig.create("app")
    created = rig.engine.container(cid)
    assert (created.state.status, created.state.running, created.state.ever_started) == ("created", False, False)
    rig.engine.start(cid)
    running = rig.engine.container(cid)
    assert running.state.running and running.state.pid and running.state.ever_started
    assert running.networks["bridge"].address == "10.0.0.2"
    with pytest.raises(NotModified):
        rig.engine.start(cid)
    rig.engine.stop(cid, timeout=5)
    stopped = rig.engine.container(cid)
    assert (stopped.state.status, stopped.state.exit_code, stopped.state.pid) == ("exited", 143, 0)
    assert stopped.private.manual_stop
    assert stopped.networks["bridge"].address == "" and "bridge" in stopped.networks  # listed, unwired
    assert _undone(rig.journal) == [] and cid not in rig.network.wired
    with pytest.raises(NotModified):
        rig.engine.stop(cid)
    rig.engine.start(cid)
    again = rig.engine.container(cid)
    assert again.state.running and again.state.exit_code == 0 and not again.private.manual_stop
    assert rig.actions(cid) == ["create", "start", "die", "stop", "start"]


def test_pause_freezes_and_stop_thaws_first(rig: Rig) -> None:
    cid = rig.create()
    rig.engine.start(cid)
    rig.engine.pause(cid)
    assert rig.engine.container(cid).state.status == "paused"
    with pytest.raises(Conflict):
        rig.engine.pause(cid)
    rig.engine.stop(cid, timeout=5)
    ops = [op for op, _ in rig.journal]
    assert ops.index("freeze") < ops.index("thaw") < len(ops) - 1
    assert rig.engine.container(cid).state.status == "exited"


def test_remove_refuses_a_running_container_unless_forced(rig: Rig) -> None:
    cid = rig.create("gone")
    rig.engine.start(cid)
    with pytest.raises(Conflict):
        rig.engine.remove(cid)
    assert rig.engine.container(cid).state.running
    rig.engine.remove(cid, force=True)
    with pytest.raises(NotFound):
        rig.engine.container(cid)
    assert _undone(rig.journal) == [] and cid in rig.network.detached
    assert rig.actions(cid)[-1] == "destroy"
    rig.create("gone")  # its name is free


def test_the_stored_shape_survives_a_round_trip(rig: Rig) -> None:
    """What the store and the file beside the container hold stays Docker's shape (restarts read it)."""
    cid = rig.create("kept", HostConfig={"RestartPolicy": {"Name": "always"}})
    rig.engine.start(cid)
    stored = rig.engine.store.get("container", cid)
    assert stored is not None
    assert stored["State"]["Running"] is True and stored["HostConfig"]["RestartPolicy"]["Name"] == "always"
    assert stored["Coracle"]["StartTicks"] and stored["GraphDriver"]["Data"]["UpperDir"].endswith("/upper")
    assert Container.from_stored(stored).stored() == stored


# ----- undo ----------------------------------------------------------------------------

def test_a_failed_attach_leaves_no_process_cgroup_or_endpoint(rig: Rig) -> None:
    cid = rig.create("broken", HostConfig={"NetworkMode": "mynet"})
    rig.network.fail_attach = True
    with pytest.raises(SystemError_, match="no space left"):
        rig.engine.start(cid)
    c = rig.engine.container(cid)
    assert (c.state.status, c.state.running, c.state.pid, c.state.exit_code) == ("created", False, 0, 128)
    assert "no space left" in c.state.error
    assert rig.monitor.abandoned == [cid] and rig.monitor.procs == {}
    assert _undone(rig.journal) == [] and ("create", f"coracle/{cid}") in rig.journal
    assert cid in rig.network.detached and cid not in rig.network.wired
    assert list(c.networks) == ["mynet"]  # it still lists the network it will join
    rig.network.fail_attach = False
    rig.engine.start(cid)  # nothing left behind blocks the next start
    assert rig.engine.container(cid).state.running


def test_a_refused_connect_records_nothing(rig: Rig) -> None:
    cid = rig.create("lonely")
    with pytest.raises(NotFound):
        rig.engine.connect(cid, "nosuchnet", {})
    assert list(rig.engine.container(cid).networks) == ["bridge"]
    rig.engine.connect(cid, "mynet", {"Aliases": ["db"]})
    with pytest.raises(Conflict):
        rig.engine.connect(cid, "mynet", {})
    assert rig.engine.container(cid).networks["mynet"].stored()["Aliases"] == ["db"]


def test_host_mode_cannot_be_connected(rig: Rig) -> None:
    cid = rig.create(HostConfig={"NetworkMode": "host"})
    with pytest.raises(InvalidParameter, match="cannot be connected"):
        rig.engine.connect(cid, "mynet", {})


# ----- networks listed before the first start -------------------------------------------

def test_a_created_container_lists_the_networks_it_will_join(rig: Rig) -> None:
    on_user = rig.create(HostConfig={"NetworkMode": "mynet"})
    asked = rig.create(HostConfig={"NetworkMode": "mynet"},
                       NetworkingConfig={"EndpointsConfig": {"mynet": {"Aliases": ["db"]}}})
    shared = rig.create(HostConfig={"NetworkMode": f"container:{on_user}"})
    assert {n: a.stored() for n, a in rig.engine.container(on_user).networks.items()} == {"mynet": {}}
    assert {n: a.stored() for n, a in rig.engine.container(asked).networks.items()} == {"mynet": {"Aliases": ["db"]}}
    assert rig.engine.container(shared).networks == {}
    assert list(rig.engine.container(rig.create(HostConfig={"NetworkMode": "default"})).networks) == ["bridge"]


def test_disconnect_of_a_created_container_forgets_the_network(rig: Rig) -> None:
    cid = rig.create(HostConfig={"NetworkMode": "bridge"},
                     NetworkingConfig={"EndpointsConfig": {"mynet": {}}})
    rig.engine.disconnect(cid, "mynet")
    c = rig.engine.container(cid)
    assert "mynet" not in c.networks and "mynet" not in c.wanted_networks
    with pytest.raises(Conflict):
        rig.engine.disconnect(cid, "mynet")


# ----- restart policies ----------------------------------------------------------------

def _exited(policy: str, retries: int = 0, code: int = 1, count: int = 0, manual: bool = False,
            finished: str = "2024-01-01T00:00:10Z") -> Container:
    state = State(status="exited", exit_code=code, started_at="2024-01-01T00:00:00Z", finished_at=finished)
    return Container(id="c" * 64, name="/c", created="", path="sleep", args=[], image_id=IMAGE.id, state=state,
                     config={}, host_config=HostSettings({"RestartPolicy": {"Name": policy,
                                                                            "MaximumRetryCount": retries}}),
                     networking_config={}, network_settings=NetworkSettings(), mounts=[], resolv_conf_path="",
                     hostname_path="", hosts_path="", log_path="", restart_count=count, layers=Layers("", "", ""),
                     private=Private(manual_stop=manual))


def test_restart_policy_decisions() -> None:
    assert not wants_restart(_exited("no"))
    assert wants_restart(_exited("always", code=0))
    assert not wants_restart(_exited("always", manual=True))  # a user's stop is final
    assert wants_restart(_exited("unless-stopped"))
    assert not wants_restart(_exited("on-failure", code=0))
    assert wants_restart(_exited("on-failure", retries=2, count=1))
    assert not wants_restart(_exited("on-failure", retries=2, count=2))
    assert wants_restart(_exited("on-failure", retries=0, count=50))  # 0: no limit


def test_which_containers_come_back_at_boot() -> None:
    assert comes_back_at_boot(_exited("always", manual=True))
    assert comes_back_at_boot(_exited("unless-stopped"))
    assert not comes_back_at_boot(_exited("unless-stopped", manual=True))
    assert not comes_back_at_boot(_exited("on-failure"))
    assert not comes_back_at_boot(_exited("always", finished="0001-01-01T00:00:00Z"))  # never ran


def test_restart_back_off_doubles_and_resets_after_a_long_run() -> None:
    tracker = RestartTracker(lambda cid: None)
    quick = _exited("always", finished="2024-01-01T00:00:01Z")
    assert [tracker.delay(quick) for _ in range(4)] == [0.1, 0.2, 0.4, 0.8]
    assert tracker.delay(_exited("always", finished="2024-01-01T00:00:30Z")) == 0.1
    assert tracker.delay(quick, immediate=True) == 0.0
    assert tracker.delay(_exited("no")) is None


def test_an_exit_under_always_restarts_and_a_stop_does_not(rig: Rig) -> None:
    cid = rig.create(HostConfig={"RestartPolicy": {"Name": "always"}})
    rig.engine.start(cid)
    first = rig.engine.container(cid).state.pid
    rig.monitor.procs[cid].kill()  # the process dies on its own: the policy brings it back
    again = rig.wait_state(cid, lambda c: c.state.running and c.state.pid != first)
    assert again.restart_count == 1 and again.state.exit_code == 0
    rig.engine.stop(cid, timeout=5)
    stopped = rig.engine.container(cid)
    assert stopped.state.status == "exited" and not stopped.state.restarting and stopped.restart_count == 1
