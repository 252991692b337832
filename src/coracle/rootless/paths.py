"""Where a rootless daemon keeps things: the XDG base directories of its user.

    data root    $XDG_DATA_HOME/coracle    (~/.local/share/coracle)
    exec root    $XDG_RUNTIME_DIR/coracle
    socket       $XDG_RUNTIME_DIR/coracle.sock
    config       $XDG_CONFIG_HOME/coracle  (~/.config/coracle, daemon.json)

These are read before the daemon enters its user namespace (HOME and the
XDG variables are the user's), and the clients use the same socket rule.
"""

from __future__ import annotations

import os

from coracle.errors import InvalidParameter


def runtime_dir() -> str:
    """$XDG_RUNTIME_DIR, which must be the user's own private directory (pam_systemd makes it)."""
    path = os.environ.get("XDG_RUNTIME_DIR", "")
    if not path:
        raise InvalidParameter(
            "XDG_RUNTIME_DIR is not set: a rootless daemon keeps its socket and state of running containers "
            "there (log in through a session that sets it, or: export XDG_RUNTIME_DIR=/run/user/$(id -u) "
            "after root made it with mode 0700 and you as its owner)")
    st = os.stat(path)
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise InvalidParameter(f"XDG_RUNTIME_DIR {path} must be owned by you with mode 0700")
    return path


def data_root() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(base, "coracle")


def config_dir() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return os.path.join(base, "coracle")


def exec_root() -> str:
    return os.path.join(runtime_dir(), "coracle")


def socket_host() -> str:
    """The API socket as a -H / DOCKER_HOST value."""
    return f"unix://{os.path.join(runtime_dir(), 'coracle.sock')}"
