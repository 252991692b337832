"""--change instructions as `docker import -c` / `docker commit -c` accept them."""

from __future__ import annotations

import pytest

from coracle.errors import InvalidParameter
from coracle.images.changes import apply


def test_env_replaces_and_appends():
    out = apply({"Env": ["PATH=/bin", "A=1"]}, ["ENV PATH /usr/bin:/bin", "ENV B=2 C='x y'"])
    assert out["Env"] == ["A=1", "PATH=/usr/bin:/bin", "B=2", "C=x y"]


def test_exec_and_shell_forms():
    out = apply({}, ['ENTRYPOINT ["/bin/app", "-v"]', "CMD echo $HOME", 'SHELL ["/bin/ash", "-e", "-c"]',
                     "HEALTHCHECK --interval=5s --retries=2 CMD wget -q localhost"])
    assert out["Entrypoint"] == ["/bin/app", "-v"]
    assert out["Cmd"] == ["/bin/sh", "-c", "echo $HOME"]
    assert out["Shell"] == ["/bin/ash", "-e", "-c"]
    assert out["Healthcheck"] == {"Test": ["CMD-SHELL", "wget -q localhost"], "Interval": 5_000_000_000,
                                  "Retries": 2}


def test_volumes_ports_labels():
    out = apply({"Labels": {"a": "1"}}, ['VOLUME ["/data", "/logs"]', "VOLUME /cache", "EXPOSE 8080/tcp 53/udp",
                                         'LABEL b="two words"'])
    assert out["Volumes"] == {"/data": {}, "/logs": {}, "/cache": {}}
    assert out["ExposedPorts"] == {"8080/tcp": {}, "53/udp": {}}
    assert out["Labels"] == {"a": "1", "b": "two words"}


@pytest.mark.parametrize("bad", ["FROM busybox", "RUN true", "EXPOSE 70000", "EXPOSE 80/icmp", "LABEL novalue",
                                 "ENV", "HEALTHCHECK --bogus=1 CMD x"])
def test_bad_changes_are_refused(bad):
    with pytest.raises(InvalidParameter):
        apply({}, [bad])
