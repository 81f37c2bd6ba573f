"""Canary releases on the local supervisor: a new version takes a share of live inference
traffic beside the serving one until the canary decision (driftloop.monitoring.canary)
promotes it to all traffic or rolls it back.

Each user stays on one side for the whole canary, so a conversation never switches model
half-way: the side is a hash of the canary's name and the caller's key, which is the
`X-Driftloop-User` header, else `X-Driftloop-Conversation`, else the API key
(`Authorization`), else the client's address. Salting with the name gives each canary its
own sample of users. The proxy counts what only it can see, per side: requests and
failures (an answer of 500 or more, or a backend it could not reach); everything else the
decision reads from the request log, where each answer names its model version.

A canary backend that cannot be reached is counted as a failure of the canary and the
request is answered by the serving version, so its clients see no error.
Standard library only: the supervisor imports it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from driftloop.serving.shadow import MIRRORED_PATHS

STICKY_HEADERS = ("X-Driftloop-User", "X-Driftloop-Conversation", "Authorization")
ROUTE_FIELDS = {"share", "model_version", "baseline", "baseline_version", "policy"}


def sticky_key(headers: Any, remote: str | None) -> str:
    for name in STICKY_HEADERS:
        value = headers.get(name)
        if value:
            return f"{name.lower()}:{value}"
    forwarded = (headers.get("X-Forwarded-For") or "").split(",")[0].strip()
    return f"address:{forwarded or remote or ''}"


def bucket(salt: str, key: str) -> float:
    """A stable point in [0, 1) for `key` under `salt`."""
    digest = hashlib.sha256(f"{salt}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass
class Side:
    requests: int = 0
    failures: int = 0

    def count(self, status: int) -> None:
        self.requests += 1
        self.failures += status >= 500

    def to_dict(self) -> dict:
        return {"requests": self.requests, "failures": self.failures}


@dataclass
class CanaryRoute:
    """The canary backend and the rule that sends it traffic; `baseline` is the backend
    name that served everything when the canary started."""

    backend: Any
    share: float
    started_at: str
    model_version: str
    baseline: str
    baseline_version: str
    policy: dict = field(default_factory=dict)
    sides: dict[str, Side] = field(default_factory=lambda: {"canary": Side(), "baseline": Side()})

    @staticmethod
    def parse_route(body: dict) -> dict:
        """The routing fields of a canary request, validated; ValueError names the bad one."""
        share = body.get("share")
        if not isinstance(share, int | float) or isinstance(share, bool) or not 0 < share < 1:
            raise ValueError("share must be a number between 0 and 1 (exclusive): the canary's part of live traffic")
        for key in ("model_version", "baseline_version"):
            if not isinstance(body.get(key), str) or not body[key]:
                raise ValueError(f"{key} must name the model version the request log records")
        policy = body.get("policy") or {}
        if not isinstance(policy, dict):
            raise ValueError("policy must be a JSON object")
        return {"share": float(share), "model_version": body["model_version"], "baseline_version": body["baseline_version"],
                "policy": policy}

    def wants(self, method: str, path: str) -> bool:
        return method == "POST" and path in MIRRORED_PATHS

    def takes(self, headers: Any, remote: str | None) -> bool:
        return bucket(self.backend.name, sticky_key(headers, remote)) < self.share

    def count(self, side: str, status: int) -> None:
        self.sides[side].count(status)

    def _route(self) -> dict:
        return {"share": self.share, "started_at": self.started_at, "model_version": self.model_version, "baseline": self.baseline,
                "baseline_version": self.baseline_version, "policy": self.policy,
                "sides": {name: side.to_dict() for name, side in self.sides.items()}}

    def describe(self) -> dict:
        return {**self.backend.describe(), **self._route()}

    def record(self) -> dict:
        """What state.json keeps, so a restarted supervisor adopts the canary with its counts."""
        return {**self.backend.record(), **self._route()}

    @classmethod
    def restore(cls, backend: Any, recorded: dict) -> CanaryRoute:
        sides = {name: Side(**{k: int(v) for k, v in (recorded.get("sides") or {}).get(name, {}).items() if k in ("requests", "failures")})
                 for name in ("canary", "baseline")}
        return cls(backend=backend, share=float(recorded["share"]), started_at=recorded["started_at"],
                   model_version=recorded["model_version"], baseline=recorded["baseline"],
                   baseline_version=recorded["baseline_version"], policy=recorded.get("policy") or {}, sides=sides)
