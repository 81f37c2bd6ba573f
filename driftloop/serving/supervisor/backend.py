"""One backend process behind the supervisor: how it is started, probed until ready,
counted while it answers requests, and stopped with every worker it forked."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from driftloop.serving.supervisor.processes import group_alive, pid_alive, process_start_ticks, signal_group
from driftloop.serving.supervisor.spec import DeploySpec

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger(__name__)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(eq=False)
class Backend:
    name: str
    port: int
    pid: int
    command: list[str]
    started_at: str
    ready_path: str
    # None for a backend adopted from a previous supervisor: it is not our child, so it is
    # watched through its pid (and start time) instead of waitpid.
    process: subprocess.Popen | None = None
    start_ticks: int | None = None
    log_path: str | None = None
    in_flight: int = 0
    exit_reported: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()

    @classmethod
    def spawn(cls, spec: DeploySpec, logs_dir: Path) -> tuple[Backend, int]:
        """Start `spec`'s command: the backend, and where its output for this start begins in its log."""
        log_path = logs_dir / f"{spec.name}.log"
        with open(log_path, "ab") as output:
            output.write(f"\n=== {now()} starting {spec.name} on port {spec.port}: {shlex.join(spec.command)}\n".encode())
            output.flush()
            offset = output.tell()
            # Its own session and process group: a signal to the supervisor's terminal or group
            # does not reach it, and stopping it reaches every worker it forks.
            process = subprocess.Popen(
                spec.command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                cwd=spec.cwd, env={**os.environ, **spec.env}, start_new_session=True, close_fds=True,
            )
        backend = cls(
            name=spec.name, port=spec.port, pid=process.pid, command=list(spec.command), started_at=now(),
            ready_path=spec.ready_path, process=process, start_ticks=process_start_ticks(process.pid), log_path=str(log_path),
        )
        return backend, offset

    @property
    def adopted(self) -> bool:
        return self.process is None

    def acquire(self) -> None:
        self.in_flight += 1
        self.idle.clear()

    def release(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        if not pid_alive(self.pid):
            return False
        return self.start_ticks is None or process_start_ticks(self.pid) == self.start_ticks

    def exit_description(self) -> str:
        code = self.process.poll() if self.process is not None else None
        if code is None:
            return "exited"
        return f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"

    def record(self) -> dict:
        return {
            "name": self.name, "port": self.port, "pid": self.pid, "command": self.command,
            "started_at": self.started_at, "ready_path": self.ready_path, "start_ticks": self.start_ticks,
            "log": self.log_path,
        }

    def describe(self) -> dict:
        return {
            "name": self.name, "port": self.port, "pid": self.pid, "started_at": self.started_at,
            "command": self.command, "ready_path": self.ready_path, "alive": self.alive(),
            "adopted": self.adopted, "in_flight": self.in_flight, "log": self.log_path,
        }

    async def ready(self, session: aiohttp.ClientSession, timeout_s: float = 5.0) -> bool:
        import aiohttp

        url = f"http://127.0.0.1:{self.port}{self.ready_path}"
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
                await response.read()
                return response.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    async def wait_ready(self, session: aiohttp.ClientSession, timeout_s: float) -> str | None:
        """None once the backend answers 200 on its ready path, else why it never will."""
        deadline = time.monotonic() + timeout_s
        pause = 0.05
        while True:
            if not self.alive():
                return f"the process {self.exit_description()} before {self.ready_path} answered 200"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return f"{self.ready_path} did not answer 200 within {timeout_s:g} s"
            if await self.ready(session, timeout_s=min(5.0, max(remaining, 0.1))):
                return None
            await asyncio.sleep(min(pause, max(deadline - time.monotonic(), 0)))
            pause = min(pause * 1.5, 0.5)

    def _leader_alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return pid_alive(self.pid)

    def _group_id(self) -> int | None:
        """The process group to signal, or None when signalling could hit an unrelated process."""
        # start_new_session made the leader's pid the group id.
        if self.process is not None:
            return self.pid
        if self.start_ticks is None:
            # Without procfs an adopted pid cannot be verified; it answered on its port when adopted.
            return self.pid if pid_alive(self.pid) else None
        # A different start time means the pid now belongs to an unrelated process.
        return self.pid if process_start_ticks(self.pid) == self.start_ticks else None

    async def stop(self, grace_s: float) -> None:
        """SIGTERM to the whole group, SIGKILL after `grace_s`."""
        pgid = self._group_id()
        if pgid is None:
            return
        signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        # The group outlives its leader when workers linger; wait for all of it.
        while self._leader_alive() or group_alive(pgid):
            if time.monotonic() >= deadline:
                log.warning("backend %s (pid %d) ignored SIGTERM for %g s; killing it", self.name, self.pid, grace_s)
                signal_group(pgid, signal.SIGKILL)
                kill_deadline = time.monotonic() + 5.0
                while self._leader_alive() and time.monotonic() < kill_deadline:
                    await asyncio.sleep(0.05)
                break
            await asyncio.sleep(0.05)
        log.info("stopped backend %s (pid %d, %s)", self.name, self.pid, self.exit_description())

    def kill_now(self) -> None:
        # Used on cancellation, where awaiting a polite shutdown is no longer possible.
        log.warning("killing %s (pid %d): its deploy was abandoned", self.name, self.pid)
        signal_group(self.pid, signal.SIGKILL)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
