"""The model registry: adapters stored by content, never overwritten, with their lineage,
a champion alias, and an append-only promotion history."""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from driftloop.artifacts import ArtifactError, publish_folder, read_pointer, sha256_file, staging_dir, verify, write_pointer


class PromotionError(RuntimeError):
    """A promotion or rollback that the registry refuses; nothing was changed."""


@dataclass(frozen=True)
class AdapterVersion:
    version: str
    path: Path
    lineage: dict


class AdapterRegistry:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def adapters(self) -> Path:
        return self.root / "adapters"

    def publish(self, adapter_dir: Path, lineage: dict) -> AdapterVersion:
        """Store a saved peft adapter under a version derived from its weights and config."""
        weights, config = adapter_dir / "adapter_model.safetensors", adapter_dir / "adapter_config.json"
        if not weights.is_file() or not config.is_file():
            raise ArtifactError(f"{adapter_dir} is not a saved adapter (adapter_model.safetensors and adapter_config.json expected)")
        digest = hashlib.sha256(f"{sha256_file(weights)}:{sha256_file(config)}".encode()).hexdigest()[:16]
        version = f"lora-{digest}"
        target = self.adapters / version
        if target.is_dir():
            return self.get(version)
        staging = staging_dir(self.adapters)
        for file in adapter_dir.iterdir():
            if file.is_file():
                shutil.copy2(file, staging / file.name)
        (staging / "lineage.json").write_text(json.dumps(lineage, indent=2, sort_keys=True, default=str))
        publish_folder(staging, target, {"version": version, "kind": "lora_adapter"})
        return AdapterVersion(version, target, lineage)

    def get(self, version: str) -> AdapterVersion:
        path = self.adapters / version
        if not path.is_dir():
            raise ArtifactError(f"adapter {version} is not in the registry at {self.adapters}")
        verify(path)
        return AdapterVersion(version, path, json.loads((path / "lineage.json").read_text()))

    def versions(self) -> list[str]:
        return sorted(p.name for p in self.adapters.glob("lora-*") if (p / "manifest.json").is_file()) if self.adapters.is_dir() else []

    # The champion alias and its audit trail. champion.json is the alias (repointed
    # atomically); promotions.jsonl is the history, only ever appended to, under a lock so
    # that two runs promoting at once cannot interleave.

    @property
    def _alias(self) -> Path:
        return self.root / "champion.json"

    @property
    def _history(self) -> Path:
        return self.root / "promotions.jsonl"

    @contextmanager
    def _locked(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".promotion.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def champion(self) -> AdapterVersion | None:
        alias = read_pointer(self._alias)
        return self.get(alias["version"]) if alias else None

    def history(self) -> list[dict]:
        if not self._history.is_file():
            return []
        return [json.loads(line) for line in self._history.read_text().splitlines() if line.strip()]

    def _record(self, event: dict) -> dict:
        event = {"at": datetime.now(UTC).isoformat(timespec="seconds"), "by": event.pop("by", None) or _who(), **event}
        with open(self._history, "a") as handle:
            handle.write(json.dumps(event, sort_keys=True, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        write_pointer(self._alias, {"version": event["version"], "since": event["at"], "action": event["action"]})
        return event

    def promote(self, version: str, metrics: dict, data_versions: dict, by: str | None = None, run_id: str | None = None,
                gate: dict | None = None) -> dict:
        """Make `version` the champion. Refused when its gate did not pass or metrics are missing."""
        self.get(version)
        if gate is not None and not gate.get("passed"):
            raise PromotionError(f"{version} did not pass its promotion gate: {gate.get('failures')}")
        if not metrics:
            raise PromotionError(f"{version} has no evaluation metrics; nothing is promoted without them")
        with self._locked():
            current = self.champion()
            if current is not None and current.version == version:
                return {"action": "unchanged", "version": version}
            return self._record({"action": "promote", "version": version, "previous": current.version if current else None,
                                 "metrics": metrics, "data_versions": data_versions, "gate": gate, "run_id": run_id, "by": by})

    def rollback(self, to: str | None = None, by: str | None = None, reason: str = "", **extra) -> dict:
        """Make an earlier champion the champion again: `to`, or the one before the current;
        `extra` (a canary decision, a run id) is kept with the event."""
        with self._locked():
            current = self.champion()
            earlier = [e["version"] for e in self.history() if e["action"] in ("promote", "rollback")]
            if to is None:
                previous = [v for v in earlier if current is None or v != current.version]
                if not previous:
                    raise PromotionError("there is no earlier champion to roll back to")
                to = previous[-1]
            elif to not in earlier:
                raise PromotionError(f"{to} was never champion; rollback goes only to an earlier champion ({sorted(set(earlier))})")
            self.get(to)
            return self._record({"action": "rollback", "version": to, "previous": current.version if current else None,
                                 "reason": reason, "by": by, **extra})

    def confirm(self, version: str, by: str | None = None, **extra) -> dict:
        """Record that the champion `version` passed its live trial (the canary); the alias stays."""
        with self._locked():
            current = self.champion()
            if current is None or current.version != version:
                raise PromotionError(f"{version} is not the champion ({current.version if current else 'none'}); only the champion "
                                     "on trial can be confirmed")
            return self._record({"action": "canary_promote", "version": version, "by": by, **extra})


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
