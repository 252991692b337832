"""The JSON shapes of request bodies, and their check: a wrong type is Docker's 400 naming the field."""

from __future__ import annotations

from typing import Any

from coracle.errors import InvalidParameter

# The JSON shapes of request bodies, as Docker's Go decoder enforces them: a
# wrong type is a 400 naming the field, null is always allowed (Go's zero
# value), unknown fields are ignored (newer clients send fields we lack).
# Tokens: str, bool, int, obj (any object), strs (list of strings),
# strslice (a string or a list of strings), labels (object of strings),
# objs (list of objects), ints; a dict is an object with known fields and
# [dict] a list of such objects.
_PORTS = "ports"
CONFIG_SHAPE: dict[str, Any] = {
    **dict.fromkeys(("Hostname", "Domainname", "User", "Image", "WorkingDir", "MacAddress", "StopSignal"), "str"),
    **dict.fromkeys(("AttachStdin", "AttachStdout", "AttachStderr", "Tty", "OpenStdin", "StdinOnce",
                     "NetworkDisabled", "ArgsEscaped"), "bool"),
    "ExposedPorts": "obj", "Volumes": "obj", "Env": "strs",
    "Healthcheck": {"Test": "strslice", "Interval": "int", "Timeout": "int", "StartPeriod": "int",
                    "StartInterval": "int", "Retries": "int"}, "OnBuild": "strs",
    "Shell": "strs", "Cmd": "strslice", "Entrypoint": "strslice", "Labels": "labels", "StopTimeout": "int",
}
HOST_CONFIG_SHAPE: dict[str, Any] = {
    **dict.fromkeys(("ContainerIDFile", "NetworkMode", "VolumeDriver", "CgroupnsMode", "IpcMode", "Cgroup",
                     "PidMode", "UTSMode", "UsernsMode", "Runtime", "Isolation", "CgroupParent", "CpusetCpus",
                     "CpusetMems"), "str"),
    **dict.fromkeys(("AutoRemove", "Privileged", "PublishAllPorts", "ReadonlyRootfs", "OomKillDisable", "Init"),
                    "bool"),
    **dict.fromkeys(("OomScoreAdj", "ShmSize", "CpuShares", "Memory", "NanoCpus", "BlkioWeight", "CpuPeriod",
                     "CpuQuota", "CpuRealtimePeriod", "CpuRealtimeRuntime", "KernelMemory", "KernelMemoryTCP",
                     "MemoryReservation", "MemorySwap", "MemorySwappiness", "PidsLimit", "CpuCount", "CpuPercent",
                     "IOMaximumIOps", "IOMaximumBandwidth"), "int"),
    **dict.fromkeys(("Binds", "VolumesFrom", "CapAdd", "CapDrop", "Dns", "DnsOptions", "DnsSearch", "ExtraHosts",
                     "GroupAdd", "Links", "SecurityOpt", "DeviceCgroupRules", "MaskedPaths", "ReadonlyPaths"),
                    "strs"),
    **dict.fromkeys(("BlkioDeviceReadBps", "BlkioDeviceWriteBps", "BlkioDeviceReadIOps", "BlkioDeviceWriteIOps"),
                    [{"Path": "str", "Rate": "int"}]),
    "BlkioWeightDevice": [{"Path": "str", "Weight": "int"}], "DeviceRequests": "objs",
    "Devices": [{"PathOnHost": "str", "PathInContainer": "str", "CgroupPermissions": "str"}],
    "Ulimits": [{"Name": "str", "Soft": "int", "Hard": "int"}],
    "Mounts": [{"Type": "str", "Source": "str", "Target": "str", "ReadOnly": "bool", "Consistency": "str",
                "BindOptions": "obj", "VolumeOptions": "obj", "TmpfsOptions": "obj"}],
    "LogConfig": {"Type": "str", "Config": "labels"}, "RestartPolicy": {"Name": "str", "MaximumRetryCount": "int"},
    "PortBindings": _PORTS, "Tmpfs": "labels", "Sysctls": "labels", "StorageOpt": "labels",
    "Annotations": "labels", "ConsoleSize": "ints",
}
CREATE_SHAPE: dict[str, Any] = {**CONFIG_SHAPE, "HostConfig": HOST_CONFIG_SHAPE,
                                "NetworkingConfig": {"EndpointsConfig": "endpoints"}}
ENDPOINT_SHAPE: dict[str, Any] = {"IPAMConfig": {"IPv4Address": "str", "IPv6Address": "str", "LinkLocalIPs": "strs"},
                                  "Links": "strs", "Aliases": "strs", "MacAddress": "str", "DriverOpts": "labels",
                                  "NetworkID": "str", "EndpointID": "str", "IPAddress": "str", "DNSNames": "strs"}
EXEC_SHAPE: dict[str, Any] = {
    **dict.fromkeys(("AttachStdin", "AttachStdout", "AttachStderr", "Tty", "Privileged", "Detach"), "bool"),
    **dict.fromkeys(("User", "WorkingDir", "DetachKeys"), "str"),
    "Cmd": "strslice", "Env": "strs", "ConsoleSize": "ints",
}

_TYPE_NAMES = {str: "a string", bool: "a boolean", int: "a number", float: "a number", list: "an array",
               dict: "an object"}


def check_shape(value: Any, shape: Any, where: str) -> None:
    """Refuse a body whose fields have the wrong JSON types, naming the first such field."""
    if value is None:
        return

    def wrong(expected: str) -> InvalidParameter:
        got = _TYPE_NAMES.get(type(value), type(value).__name__)
        return InvalidParameter(f"invalid {where or 'request body'}: expected {expected}, got {got}")

    def is_str_list(v: Any) -> bool:
        return isinstance(v, list) and all(isinstance(x, str) for x in v)

    if isinstance(shape, dict):
        if not isinstance(value, dict):
            raise wrong("an object")
        for key, sub in shape.items():
            if key in value:
                check_shape(value[key], sub, f"{where}.{key}" if where else key)
    elif isinstance(shape, list):
        if not isinstance(value, list):
            raise wrong("an array")
        for i, item in enumerate(value):
            check_shape(item, shape[0], f"{where}[{i}]")
    elif shape == "str" and not isinstance(value, str):
        raise wrong("a string")
    elif shape == "bool" and not isinstance(value, bool):
        raise wrong("a boolean")
    elif shape == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise wrong("an integer")
    elif shape == "obj" and not isinstance(value, dict):
        raise wrong("an object")
    elif shape == "strs" and not is_str_list(value):
        raise wrong("an array of strings")
    elif shape == "strslice" and not (isinstance(value, str) or is_str_list(value)):
        raise wrong("a string or an array of strings")
    elif shape == "labels" and not (isinstance(value, dict) and all(isinstance(v, str) for v in value.values())):
        raise wrong("an object of strings")
    elif shape == "objs" and not (isinstance(value, list) and all(isinstance(v, dict) for v in value)):
        raise wrong("an array of objects")
    elif shape == "ints" and not (isinstance(value, list) and all(type(v) is int for v in value)):
        raise wrong("an array of integers")
    elif shape == _PORTS:
        if not isinstance(value, dict):
            raise wrong("an object")
        for port, bindings in value.items():
            if bindings is not None and not (isinstance(bindings, list) and all(isinstance(b, dict) for b in bindings)):
                raise InvalidParameter(f"invalid {where}[{port!r}]: expected an array of port bindings")
            for b in bindings or []:
                check_shape(b, {"HostIp": "str", "HostPort": "str"}, f"{where}[{port!r}]")
    elif shape == "endpoints":
        if not isinstance(value, dict):
            raise wrong("an object")
        for name, endpoint in value.items():
            check_shape(endpoint, ENDPOINT_SHAPE, f"{where}[{name!r}]")


def create_body(body: Any) -> dict[str, Any]:
    """A create request as clients send it, in the shape the engine reads.

    The docker CLI names the default network "default" both as NetworkMode and
    as the key of its endpoint settings; both mean the bridge network.
    """
    if not isinstance(body, dict):
        raise InvalidParameter("the container config must be a JSON object")
    check_shape(body, CREATE_SHAPE, "")
    endpoints = (body.get("NetworkingConfig") or {}).get("EndpointsConfig")
    if endpoints and "default" in endpoints:
        endpoints["bridge"] = endpoints.pop("default")
    return body
