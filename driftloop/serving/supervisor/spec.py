"""What a deploy (or shadow) request asks for, validated before anything is started."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

# Names become log file names, so they must not carry path separators.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")  # bento tags are name:version
DEPLOY_FIELDS = {"name", "command", "port", "ready_path", "env", "cwd", "ready_timeout_s", "drain_timeout_s"}


class BadRequest(ValueError):
    pass


@dataclass(frozen=True)
class DeploySpec:
    name: str
    command: list[str]
    port: int
    ready_path: str = "/readyz"
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    ready_timeout_s: float = 300.0
    drain_timeout_s: float = 30.0

    @classmethod
    def parse(cls, body: Any) -> DeploySpec:
        if not isinstance(body, dict):
            raise BadRequest("the deploy body must be a JSON object")
        # A misspelt option silently falling back to its default (a 300 s timeout instead of
        # the intended 30) is worse than a refused deploy.
        unknown = sorted(set(body) - DEPLOY_FIELDS)
        if unknown:
            raise BadRequest(f"unknown deploy fields: {', '.join(unknown)}")
        name = body.get("name")
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise BadRequest("name must be 1-128 characters of letters, digits, '.', '_', ':' or '-', "
                             "starting with a letter or digit")
        command = body.get("command")
        if not isinstance(command, list) or not command or not all(isinstance(arg, str) for arg in command):
            raise BadRequest("command must be a non-empty list of strings (an argv, not a shell line)")
        port = body.get("port")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise BadRequest("port must be an integer between 1 and 65535")
        ready_path = body.get("ready_path", "/readyz")
        if not isinstance(ready_path, str) or not ready_path.startswith("/"):
            raise BadRequest("ready_path must be a path starting with '/'")
        env = body.get("env") or {}
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise BadRequest("env must map strings to strings")
        cwd = body.get("cwd")
        if cwd is not None and (not isinstance(cwd, str) or not os.path.isdir(cwd)):
            raise BadRequest(f"cwd {cwd!r} is not a directory")
        timeouts = {}
        for key, default in (("ready_timeout_s", 300.0), ("drain_timeout_s", 30.0)):
            value = body.get(key, default)
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise BadRequest(f"{key} must be a non-negative number")
            timeouts[key] = float(value)
        return cls(name=name, command=command, port=port, ready_path=ready_path, env=env, cwd=cwd, **timeouts)
