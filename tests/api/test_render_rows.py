"""`ps` rows kept encoded per record: what a client sees is what the summary says, and it follows changes."""

from __future__ import annotations

import json
from typing import Any

from coracle import clock
from coracle.api.render import SummaryRows, summary
from coracle.engine.container import Container


def stored(cid: str, name: str, running: bool, args: list[str]) -> dict[str, Any]:
    return {"Id": cid * 64, "Name": f"/{name}", "Created": clock.timestamp(), "Path": "sleep", "Args": args,
            "Image": "sha256:" + "b" * 64,
            "State": {"Status": "running" if running else "exited", "Running": running, "Paused": False,
                      "Restarting": False, "OOMKilled": False, "Dead": False, "Pid": 0, "ExitCode": 0,
                      "Error": "", "StartedAt": clock.timestamp(), "FinishedAt": clock.ZERO},
            "Config": {"Image": "busybox", "Labels": {"a": "b"}}, "HostConfig": {"NetworkMode": "bridge"},
            "NetworkSettings": {"Ports": {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}, "Networks": {}},
            "Mounts": []}


def test_the_encoded_listing_is_the_summaries() -> None:
    every = [Container.from_stored(stored("a", "one", True, ["1 2"])),
             Container.from_stored(stored("b", "two", False, ["3"]))]
    rows = SummaryRows()
    listed = json.loads(rows.listing(every, every))
    assert listed == [summary(c) for c in every]
    assert listed[0]["Command"] == "sleep '1 2'"  # Docker quotes arguments holding a space


def test_a_saved_record_replaces_its_row_and_removed_ones_are_forgotten() -> None:
    first = Container.from_stored(stored("a", "one", True, ["1"]))
    rows = SummaryRows()
    rows.listing([first], [first])
    renamed = Container.from_stored(stored("a", "renamed", True, ["1"]))  # the engine typed a new save
    assert json.loads(rows.listing([renamed], [renamed]))[0]["Names"] == ["/renamed"]
    other = Container.from_stored(stored("c", "other", True, ["1"]))
    rows.listing([other], [other])
    assert json.loads(rows.encoded(other))["Names"] == ["/other"]
    assert set(rows._rows) == {other.id}
