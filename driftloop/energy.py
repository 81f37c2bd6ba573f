"""Energy and estimated emissions of a piece of work, measured with CodeCarbon's offline
tracker: nothing leaves the machine (no API, no cloud metadata lookup).

CodeCarbon reads the CPU's RAPL counters where the kernel exposes them, NVML for NVIDIA
GPUs, and otherwise estimates the CPU's draw from its load and a power figure: its TDP
table's, else 4 W per thread, or `DRIFTLOOP_CPU_POWER_W` when set (the stated power model
of a machine whose counters cannot be read, such as a VM). RAM is estimated from its size.
Emissions are the energy times the grid's carbon intensity: CodeCarbon's figure for
`DRIFTLOOP_CARBON_COUNTRY` (ISO 3166 alpha-3), or `DRIFTLOOP_CARBON_INTENSITY` (g CO2e
per kWh) when set. Every reading says which method measured it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from driftloop.settings import EnergySettings

logging.getLogger("codecarbon").setLevel(logging.ERROR)


@dataclass(frozen=True)
class EnergyReading:
    kwh: float
    cpu_kwh: float
    ram_kwh: float
    gpu_kwh: float
    kg_co2e: float
    seconds: float
    cpu_method: str
    cpu_power_w: float
    cpu_rated_w: float | None
    country: str
    intensity_g_per_kwh: float

    def to_dict(self) -> dict:
        return asdict(self)


def _totals_output():
    """CodeCarbon's public output hook, keeping the running totals each flush and stop hand it
    (made on first use: importing CodeCarbon is not free, and definitions load this module)."""
    from codecarbon.output import BaseOutput

    class Totals(BaseOutput):
        total = None

        def out(self, total, delta) -> None:
            self.total = total

        def live_out(self, total, delta) -> None:
            self.total = total

    return Totals()


class EnergyMeter:
    """A running measurement of this process (`process`, the default) or of the whole
    machine (`machine`); `read()` gives the totals since `start()` without stopping."""

    def __init__(self, settings: EnergySettings | None = None, tracking_mode: str = "process") -> None:
        self.settings = settings or EnergySettings.from_env()
        self.tracking_mode = tracking_mode
        self._tracker = self._totals = None
        self._lock = threading.Lock()
        self._started = 0.0

    def start(self) -> EnergyMeter:
        from codecarbon import OfflineEmissionsTracker

        options = {"force_cpu_power": self.settings.cpu_power_w} if self.settings.cpu_power_w else {}
        self._totals = _totals_output()
        self._tracker = OfflineEmissionsTracker(
            country_iso_code=self.settings.carbon_country, save_to_file=False, log_level="error", tracking_mode=self.tracking_mode,
            measure_power_secs=self.settings.energy_interval_s, allow_multiple_runs=True, output_handlers=[self._totals], **options)
        self._tracker.start()
        self._started = time.perf_counter()
        return self

    def read(self) -> EnergyReading:
        with self._lock:
            self._tracker.flush()
            return self._reading()

    def stop(self) -> EnergyReading:
        with self._lock:
            self._tracker.stop()
            return self._reading()

    def _reading(self) -> EnergyReading:
        data = self._totals.total
        kwh = float(data.energy_consumed)
        intensity = self.settings.carbon_intensity
        if intensity is None:
            intensity = (float(data.emissions) / kwh * 1000.0) if kwh > 0 else 0.0
        cpu = next((h for h in getattr(self._tracker, "_hardware", []) if type(h).__name__ == "CPU"), None)
        return EnergyReading(kwh=kwh, cpu_kwh=float(data.cpu_energy), ram_kwh=float(data.ram_energy), gpu_kwh=float(data.gpu_energy),
                             kg_co2e=kwh * intensity / 1000.0, seconds=time.perf_counter() - self._started,
                             cpu_method=str(getattr(cpu, "_mode", "unknown")), cpu_power_w=float(data.cpu_power or 0.0),
                             cpu_rated_w=_rated_watts(cpu),
                             country=self.settings.carbon_country, intensity_g_per_kwh=round(intensity, 3))


def _rated_watts(cpu) -> float | None:
    """The full-load power a load-based estimate scales (the stated `DRIFTLOOP_CPU_POWER_W`,
    else CodeCarbon's TDP table or its per-thread default); None where counters measure."""
    if cpu is None or getattr(cpu, "_mode", None) not in ("cpu_load", "constant"):
        return None
    rated = getattr(cpu, "_tdp", None)
    return float(rated) if rated else None


class Measured:
    """What `measured()` yields: the reading once the block has ended, or why there is none."""

    reading: EnergyReading | None = None
    error: str | None = None


@contextmanager
def measured(settings: EnergySettings | None = None) -> Iterator[Measured]:
    """The energy of the block, this process's share. The block's own errors pass through
    unchanged; a meter that cannot run (an unreadable platform) costs the work nothing but
    its reading, and says why."""
    holder = Measured()
    try:
        meter = EnergyMeter(settings).start()
    except Exception as err:  # noqa: BLE001 - measuring must never fail the work it measures
        meter, holder.error = None, f"{type(err).__name__}: {err}"
    try:
        yield holder
    finally:
        if meter is not None:
            try:
                holder.reading = meter.stop()
            except Exception as err:  # noqa: BLE001
                holder.error = f"{type(err).__name__}: {err}"


class EnergyWatch:
    """This process's energy, read every `energy_interval_s` on a thread of its own and
    handed to `on_reading` (a service's metrics); a meter that cannot run is logged once and
    the service runs without it."""

    def __init__(self, on_reading, settings: EnergySettings | None = None, log: logging.Logger | None = None) -> None:
        self.settings = settings or EnergySettings.from_env()
        self.on_reading, self.log = on_reading, log or logging.getLogger(__name__)
        self._stop = threading.Event()
        self._meter: EnergyMeter | None = None

    def start(self) -> bool:
        try:
            self._meter = EnergyMeter(self.settings).start()
        except Exception as err:  # noqa: BLE001 - the service serves without its energy figures
            self.log.warning("energy is not measured here: %s: %s", type(err).__name__, err)
            return False
        threading.Thread(target=self._run, name="energy", daemon=True).start()
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.settings.energy_interval_s):
            try:
                self.on_reading(self._meter.read())
            except Exception as err:  # noqa: BLE001
                self.log.warning("energy reading failed: %s: %s", type(err).__name__, err)

    def stop(self) -> None:
        self._stop.set()
