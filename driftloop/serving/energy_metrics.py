"""The model server's energy in its Prometheus metrics: CodeCarbon's reading of the process
where generation runs (driftloop/energy.py), as counters of kWh and kg CO2e, and what it
comes to per 1,000 client generations (shadow copies are charged to the requests they copy)."""

import logging
import threading

import bentoml

from driftloop.energy import EnergyReading, EnergyWatch

energy_kwh = bentoml.metrics.Counter(name="driftloop_energy_kwh", documentation="Energy the model server used, kWh (CodeCarbon, offline)")
emissions_kg = bentoml.metrics.Counter(name="driftloop_emissions_kg_co2e", documentation="Estimated emissions of that energy, kg CO2e")
energy_per_1k = bentoml.metrics.Gauge(name="driftloop_energy_wh_per_1k_requests", multiprocess_mode="max",
                                      documentation="Model server energy per 1,000 client generations since it started, Wh")


class EnergyAccount:
    def __init__(self) -> None:
        self.generations, self._metered, self._lock = 0, (0.0, 0.0), threading.Lock()
        self.watch = EnergyWatch(self._record, log=logging.getLogger("driftloop.energy"))
        self.watch.start()

    def served(self, generations: int) -> None:
        with self._lock:
            self.generations += generations

    def _record(self, reading: EnergyReading) -> None:
        kwh, kg = self._metered
        energy_kwh.inc(max(reading.kwh - kwh, 0.0))
        emissions_kg.inc(max(reading.kg_co2e - kg, 0.0))
        self._metered = (reading.kwh, reading.kg_co2e)
        if self.generations:
            energy_per_1k.set(reading.kwh * 1000.0 / self.generations * 1000.0)
