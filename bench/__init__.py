"""coracle's benchmark suite: the same docker-style commands against coracle, Docker and Podman.

Every engine runs inside its own throwaway network namespace (its "host"), with
its own data root, socket and cgroup parent, so a run never touches the
machine's network and removes everything it started. `python -m bench --help`.
"""
