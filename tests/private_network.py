"""The test session's own network: a namespace with only loopback, made by the session itself.

A real PACS (Orthanc 1.10) cannot bind to loopback alone: its HTTP and DICOM ports listen on every
interface. So, where it can (as root, with `ip`), the whole test session moves into a fresh network
namespace whose only interface is `lo` before anything starts: Orthanc, the session's Ray cluster,
Serve and every client then talk over that loopback, and nothing a test starts is reachable from
elsewhere. The namespace is deleted when the session ends. Network namespaces belong to threads,
and threads and processes started later inherit the one they are made in, so this is done first.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess

CLONE_NEWNET = 0x40000000
_STATE: dict[str, str] = {}


def enter_private_network() -> str | None:
    """Move this process into a new loopback-only namespace; return its name, or None where that is not possible."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return None
    name = f"clare-tests-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True, capture_output=True)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
            raise OSError(ctypes.get_errno(), "setns into the test network namespace failed")
    finally:
        os.close(fd)
    _STATE["name"] = name
    return name


def leave_private_network() -> None:
    name = _STATE.pop("name", None)
    if name:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)


def interfaces() -> list[str]:
    """The network interfaces of this thread's namespace (from the kernel; /sys/class/net would show the
    namespace sysfs was mounted in)."""
    return sorted(name for _, name in socket.if_nameindex())


def private_network_name() -> str | None:
    """The session's namespace, when it is in one whose only interface is loopback."""
    name = _STATE.get("name")
    return name if name and interfaces() == ["lo"] else None
