"""A rootless daemon's defaults: its user's directories, and ~/.config/coracle/daemon.json.

daemon.json holds coracled's long flag names as keys (as dockerd's does),
e.g. {"bip": "10.99.0.1/24", "log-level": "debug"}; flags on the command line
win over it.
"""

from __future__ import annotations

import json
import os
from typing import Any

from coracle.errors import InvalidParameter
from coracle.rootless import paths

UPLINK_MTU = 65520  # pasta's tap: bridges as large carry a TCP segment through in one frame


def daemon_defaults() -> dict[str, Any]:
    """argparse defaults for a daemon started by an ordinary user."""
    defaults: dict[str, Any] = {"host": paths.socket_host(), "data_root": paths.data_root(),
                                "exec_root": paths.exec_root(), "mtu": UPLINK_MTU}
    path = os.path.join(paths.config_dir(), "daemon.json")
    try:
        with open(path) as f:
            loaded = json.load(f)
    except FileNotFoundError:
        return defaults
    except ValueError as exc:
        raise InvalidParameter(f"{path}: {exc}") from None
    if not isinstance(loaded, dict):
        raise InvalidParameter(f"{path}: expected an object of flag names")
    defaults.update({str(k).replace("-", "_"): v for k, v in loaded.items()})
    return defaults
