"""Processes and ports on this host as the supervisor sees them: liveness through /proc,
signals to a process group, free and taken loopback ports, the tail of a process's log.
Standard library only: the client imports it too."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

LOG_TAIL_CHARS = 2000


def free_port() -> int:
    """A TCP port that was free on loopback a moment ago (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def read_tail(path: Path, start: int = 0, limit: int = LOG_TAIL_CHARS) -> str:
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(start, size - limit))
            return handle.read().decode("utf-8", errors="replace").strip()
    except OSError:
        return ""


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first); None without procfs."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces or parentheses.
    return raw[raw.rindex(")") + 2:].split()


def process_start_ticks(pid: int) -> int | None:
    """The process start time in clock ticks since boot: with the pid it names one process
    for good, where the pid alone may have been reused after a reboot or a long uptime."""
    fields = proc_stat(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # An orphan whose reaper never calls wait() stays a zombie: it still answers kill(0) but
    # will never serve again.
    fields = proc_stat(pid)
    return not (fields and fields[0] in {"Z", "X"})


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not os.path.isdir("/proc"):
        return True
    # Zombies stay group members until reaped, and in a container whose init never reaps
    # they stay forever; only a live member can still hold the port or the GPU.
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = proc_stat(int(entry.name))
            if fields and len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in {"Z", "X"}:
                return True
    return False


def signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
