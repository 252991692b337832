"""Events as Docker emits them, with its actor IDs, whichever path made the change."""

from __future__ import annotations

import json
import time

from compat_helpers import Docker
from harness import unique


def _events(docker: Docker, since: str, *filters: str) -> list[dict]:
    until = str(int(time.time()) + 1)
    args = [a for f in filters for a in ("--filter", f)]
    out = docker("events", "--since", since, "--until", until, *args, "--format", "{{json .}}").stdout
    return [json.loads(line) for line in out.splitlines()]


def test_image_events_carry_the_image_id(docker: Docker) -> None:
    """Docker: tag, untag and delete name the image by its ID, with the name concerned as an attribute."""
    since = str(int(time.time()) - 1)
    repo = unique("evimg")
    image_id = docker("image", "inspect", "-f", "{{.Id}}", "busybox").stdout.strip()
    docker("tag", "busybox", f"{repo}:one")
    docker("rmi", f"{repo}:one")
    seen = [(e["Action"], e["Actor"]["ID"], e["Actor"]["Attributes"]["name"])
            for e in _events(docker, since, "type=image")]
    assert ("tag", image_id, f"{repo}:one") in seen
    assert ("untag", image_id, image_id) in seen


def test_network_connect_on_start_and_stop_event(docker: Docker) -> None:
    """Docker: a container joining and leaving a network at start and stop emits connect and
    disconnect with the network's ID and the container as an attribute; `docker stop` emits stop."""
    since = str(int(time.time()) - 1)
    net, name = unique("evnet"), unique("evc")
    net_id = docker("network", "create", net).stdout.strip()
    cid = docker("run", "-d", "--name", name, "--network", net, "busybox", "sleep", "60").stdout.strip()
    docker("stop", "-t", "1", name)
    docker("rm", name)
    docker("network", "rm", net)
    network = [(e["Action"], e["Actor"]["ID"], e["Actor"]["Attributes"].get("container"))
               for e in _events(docker, since, "type=network", f"network={net}")]
    assert network[0] == ("create", net_id, None) and network[-1] == ("destroy", net_id, None)
    assert ("connect", net_id, cid) in network and ("disconnect", net_id, cid) in network
    actions = [e["Action"] for e in _events(docker, since, "type=container", f"container={name}")]
    assert actions.index("die") < actions.index("stop") < actions.index("destroy")


def test_attach_event(docker: Docker) -> None:
    """Docker: `docker run` attaches to the container it starts, which shows as an attach event."""
    since = str(int(time.time()) - 1)
    name = unique("eva")
    docker("run", "--name", name, "busybox", "true")
    docker("rm", name)
    actions = [e["Action"] for e in _events(docker, since, "type=container", f"container={name}")]
    assert actions.index("create") < actions.index("attach") < actions.index("start")
