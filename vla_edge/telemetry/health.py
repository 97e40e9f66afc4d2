"""The board's health: CPU and memory (psutil), temperatures (psutil and /sys thermal zones), Raspberry Pi throttling.

`HealthSampler.sample()` reads everything once and returns a `HealthSample`; nothing runs in the background.
The metrics collector and /status.json call `sample_if_older()`, which reuses a sample younger than
``min_interval_s``, so scrapes and status reads close together do not re-read sensors (or run ``vcgencmd``).
CPU percentages are averages since the previous sample, i.e. over the scrape interval.
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

# Bits of the Raspberry Pi firmware's get_throttled word (bits 16+ are "has occurred since boot").
THROTTLE_FLAGS: dict[int, str] = {
    0: "under_voltage", 1: "arm_freq_capped", 2: "throttled", 3: "soft_temp_limit",
    16: "under_voltage_occurred", 17: "arm_freq_capped_occurred", 18: "throttled_occurred",
    19: "soft_temp_limit_occurred",
}


def decode_throttled(word: int) -> dict[str, bool]:
    return {name: bool(word >> bit & 1) for bit, name in THROTTLE_FLAGS.items()}


@dataclass(frozen=True)
class HealthSample:
    process_cpu_percent: float
    system_cpu_percent: float
    rss_bytes: int
    memory_used_ratio: float
    memory_available_bytes: int
    temperatures_c: dict[str, float]
    throttled: dict[str, bool] | None
    t_ns: int = 0  # monotonic time of the sample


class HealthSampler:
    """Reads the board's health on demand. ``sys_root`` is where ``/sys`` is looked up (tests point it elsewhere)."""

    RPI_THROTTLED = Path("devices/platform/soc/soc:firmware/get_throttled")

    def __init__(self, min_interval_s: float = 1.0, sys_root: Path = Path("/sys"), use_vcgencmd: bool = True) -> None:
        self._min_interval_ns = int(min_interval_s * 1e9)
        self._sys_root = sys_root
        self._use_vcgencmd = use_vcgencmd
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the first call only starts the measurement window
        psutil.cpu_percent(None)
        self._lock = threading.Lock()
        self.last: HealthSample | None = None

    def sample_if_older(self) -> HealthSample:
        with self._lock:
            last = self.last
            if last is not None and time.monotonic_ns() - last.t_ns < self._min_interval_ns:
                return last
            return self._sample_locked()

    def sample(self) -> HealthSample:
        with self._lock:
            return self._sample_locked()

    def _sample_locked(self) -> HealthSample:
        memory = psutil.virtual_memory()
        temps = self._psutil_temperatures()
        # Jetson boards expose their sensors as thermal zones that psutil does not always list.
        for name, value in self._thermal_zones().items():
            temps.setdefault(name, value)
        sample = HealthSample(
            process_cpu_percent=self._process.cpu_percent(None),
            system_cpu_percent=psutil.cpu_percent(None),
            rss_bytes=self._process.memory_info().rss,
            memory_used_ratio=(memory.total - memory.available) / memory.total,
            memory_available_bytes=memory.available,
            temperatures_c=temps,
            throttled=self._throttled(),
            t_ns=time.monotonic_ns(),
        )
        self.last = sample
        return sample

    def _thermal_zones(self) -> dict[str, float]:
        temps: dict[str, float] = {}
        for zone in sorted((self._sys_root / "class" / "thermal").glob("thermal_zone*")):
            try:
                millideg = int((zone / "temp").read_text().strip())
                kind = (zone / "type").read_text().strip() or zone.name
            except (OSError, ValueError):
                continue  # some zones refuse reads while their sensor sleeps
            temps[f"{kind}:{zone.name}"] = millideg / 1000.0
        return temps

    def _psutil_temperatures(self) -> dict[str, float]:
        reader = getattr(psutil, "sensors_temperatures", None)  # absent on some platforms
        if reader is None:
            return {}
        try:
            groups = reader()
        except (OSError, RuntimeError):
            return {}
        temps: dict[str, float] = {}
        for chip, entries in groups.items():
            for index, entry in enumerate(entries):
                temps[f"{chip}:{entry.label or index}"] = float(entry.current)
        return temps

    def _throttled(self) -> dict[str, bool] | None:
        path = self._sys_root / self.RPI_THROTTLED
        try:
            return decode_throttled(int(path.read_text().strip(), 16))
        except (OSError, ValueError):
            pass
        if not self._use_vcgencmd:
            return None
        try:
            out = subprocess.run(["vcgencmd", "get_throttled"], capture_output=True, text=True, timeout=2,
                                 check=True).stdout
            return decode_throttled(int(out.strip().split("=", 1)[1], 16))
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            return None
