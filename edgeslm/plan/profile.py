"""The device profile ``edgeslm tune`` writes (``HOME/device-profile.json``): this machine's fitted
memory constants and measured thread counts, which ``plan``, ``run``, ``bench`` and ``serve`` use
by default. A profile is this machine's and this edgeslm's: one from another machine (another CPU,
core count or memory) or another version is ignored with a warning, a corrupt one too.
``EDGESLM_NO_PROFILE=1`` turns it off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..device_speed import Ceilings
from ..engines.base import Tuning
from ..store.atomic import write_atomic
from ..version import __version__
from .memory import MemoryConstants

log = logging.getLogger(__name__)

PROFILE_FILE = "device-profile.json"
ENV_NO_PROFILE = "EDGESLM_NO_PROFILE"
SCHEMA = 1


@dataclass(frozen=True)
class DeviceProfile:
    machine: str  # fingerprint(): what the measurements hold for
    edgeslm: str
    created: str
    constants: MemoryConstants
    threads: int | None = None  # generation's best thread count here (None: not measured)
    threads_batch: int | None = None  # prompt processing's
    measurements: tuple[dict[str, Any], ...] = field(default=())  # what was measured, for the record
    n_ubatch: int | None = None  # the micro-batch prompt processing measured best at (None: not measured)
    flash_attn: bool | None = None  # flash attention on or off, as measured best (None: llama.cpp decides)
    use_mmap: bool | None = None  # the file mapped or read into memory, as measured best (None: not measured)
    read_bytes_per_s: float | None = None  # memory read bandwidth (``device_speed``; None: not measured)
    matmul_flops: float | None = None  # F32 GEMM rate

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["constants"]["repacked_types"] = sorted(self.constants.repacked_types)
        return {**data, "schema": SCHEMA}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeviceProfile:
        c = dict(data["constants"])
        constants = MemoryConstants(int(c["base"]), float(c["per_vocab"]), float(c["per_activation"]),
                                    frozenset(str(t) for t in c["repacked_types"]))
        return cls(str(data["machine"]), str(data["edgeslm"]), str(data["created"]), constants,
                   _count(data.get("threads")), _count(data.get("threads_batch")),
                   tuple(dict(m) for m in data.get("measurements") or ()), _count(data.get("n_ubatch")),
                   _flag(data.get("flash_attn")), _flag(data.get("use_mmap")), _rate(data.get("read_bytes_per_s")),
                   _rate(data.get("matmul_flops")))

    @property
    def tuning(self) -> Tuning:
        return Tuning(self.n_ubatch, self.flash_attn, self.use_mmap)


def _rate(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 8192 else None


def fingerprint() -> str:
    """This machine, as measurements see it: architecture, CPU model, physical cores, memory (GiB)."""
    from ..device import system_ram
    from ..engines.base import physical_cores

    model = ""
    try:
        with open("/proc/cpuinfo") as fp:
            model = next((line.split(":", 1)[1].strip() for line in fp if line.startswith("model name")), "")
    except OSError:
        pass
    text = f"{platform.machine()}|{model or platform.processor()}|{physical_cores()}|{system_ram() // 2**30}"
    return f"{platform.machine()}, {physical_cores()} cores, {system_ram() // 2**30} GiB, " \
           f"{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def profile_path(home: Path) -> Path:
    return home / PROFILE_FILE


def load_profile(home: Path) -> DeviceProfile | None:
    """This machine's profile, or None: none written, turned off, or not this machine's or version's."""
    if os.environ.get(ENV_NO_PROFILE, "").strip() in ("1", "true", "yes"):
        return None
    path = profile_path(home)
    try:
        profile = DeviceProfile.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        log.warning("ignoring the device profile %s: it cannot be read; 'edgeslm tune' writes a new one", path)
        return None
    if profile.machine != fingerprint():
        log.warning("ignoring the device profile %s: it was measured on another machine (%s); run 'edgeslm tune' "
                    "here", path, profile.machine)
        return None
    if profile.edgeslm != __version__:
        log.warning("ignoring the device profile %s: edgeslm %s wrote it, this is %s; run 'edgeslm tune' again",
                    path, profile.edgeslm, __version__)
        return None
    return profile


def save_profile(home: Path, profile: DeviceProfile) -> Path:
    path = profile_path(home)
    write_atomic(path, json.dumps(profile.to_dict(), indent=2).encode(), home)
    return path


def memory_constants(home: Path) -> MemoryConstants:
    """The constants ``plan`` uses: the profile's, else the defaults (fitted on the development machine)."""
    profile = load_profile(home)
    return profile.constants if profile else MemoryConstants()


def profile_threads(home: Path) -> int | None:
    """The thread count the profile measured best for generation (None: no profile, or not measured)."""
    profile = load_profile(home)
    return profile.threads if profile else None


def profile_ceilings(home: Path) -> Ceilings | None:
    """The memory bandwidth and matmul rate ``tune`` measured here (None: not measured, or no profile)."""
    profile = load_profile(home)
    if profile is None or profile.read_bytes_per_s is None or profile.matmul_flops is None:
        return None
    return Ceilings(profile.read_bytes_per_s, profile.matmul_flops, profile.threads or 0)


def profile_tuning(home: Path) -> Tuning:
    """The micro-batch, flash attention and mmap setting the profile measured best (None each: not
    measured, or no profile)."""
    profile = load_profile(home)
    return profile.tuning if profile else Tuning()
