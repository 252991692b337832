"""The descriptor limit of coracle's own processes and of what they start.

The daemon, the keeper and the monitor hold a few descriptors per container
(stdio pipes, sockets), so the default soft limit of 1024 would cap a host at
a few hundred containers. Each raises its soft limit to the hard limit (never
above it: raising the hard limit is the administrator's call). Containers and
execs get the conventional soft limit back (1024, as Docker gives since 25),
unless their spec sets `--ulimit nofile`.
"""

from __future__ import annotations

import resource

CONTAINER_NOFILE_SOFT = 1024


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE := hard; returns the new soft limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def lower_nofile_for_container() -> None:
    """In a freshly forked container or exec child, before its own ulimits apply."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(CONTAINER_NOFILE_SOFT, hard), hard))
