"""What a device is: this machine, detected, or one described by the user.

Detection reads Linux's /proc and /sys (RAM, a cgroup memory limit, physical cores, the SIMD
flags of the CPU, GPUs by PCI vendor or NVIDIA's driver), and asks llama.cpp which of those
features its build uses. On macOS it uses sysctl. Nothing here needs a network or root.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InvalidParameterError

DEVICE_KINDS = ("phone", "board", "laptop", "desktop", "server")
# CPU flags that matter to llama.cpp's kernels, as Linux spells them -> as we print them.
_X86_FLAGS = {
    "avx": "AVX", "avx2": "AVX2", "fma": "FMA", "f16c": "F16C", "avx512f": "AVX-512", "avx512_vnni": "AVX-512 VNNI",
    "avx512_bf16": "AVX-512 BF16", "avx_vnni": "AVX-VNNI", "amx_tile": "AMX",
}
_ARM_FLAGS = {"asimd": "NEON", "asimddp": "DOTPROD", "i8mm": "I8MM", "sve": "SVE", "sve2": "SVE2", "fphp": "FP16"}
_GPU_VENDORS = {"0x10de": "NVIDIA", "0x1002": "AMD", "0x8086": "Intel", "0x5143": "Qualcomm Adreno"}


@dataclass(frozen=True)
class Device:
    kind: str  # one of DEVICE_KINDS
    ram: int  # bytes the system has (or a container may use)
    cores: int  # physical cores
    arch: str  # 'x86_64', 'arm64'
    os: str  # 'linux', 'darwin', 'windows', 'android', 'ios'
    simd: tuple[str, ...] = ()
    gpus: tuple[str, ...] = ()
    npu: bool = False
    available_ram: int | None = None  # free now (this machine only)
    engine_features: tuple[str, ...] = ()  # what the installed llama.cpp build uses
    detected: bool = False
    notes: tuple[str, ...] = field(default=())

    @property
    def apple_silicon(self) -> bool:
        return self.os in ("darwin", "ios") and self.arch == "arm64"


def kind_for(ram: int, arch: str, os_name: str) -> str:
    """A device class when none is given: by OS, then by RAM."""
    if os_name in ("android", "ios"):
        return "phone"
    if ram < 6 * 10**9:
        return "phone" if arch == "arm64" or os_name == "android" else "board"
    if arch == "arm64" and os_name == "linux" and ram <= 8 * 2**30:
        return "board"
    return "laptop" if ram <= 16 * 2**30 else "desktop"


def describe(
    *,
    kind: str | None,
    ram: int,
    cores: int | None,
    simd: tuple[str, ...] | None,
    gpus: tuple[str, ...] = (),
    npu: bool = False,
    os_name: str | None = None,
    arch: str | None = None,
) -> Device:
    """A device the user describes; what is left out is what such a device usually has."""
    if kind is not None and kind not in DEVICE_KINDS:
        raise InvalidParameterError(f"device {kind!r} is not known; valid: {', '.join(DEVICE_KINDS)}", params="device")
    if cores is not None and not 1 <= cores <= 1024:
        raise InvalidParameterError(f"cores {cores} is out of range; valid: 1 to 1,024", params="cores")
    mobile = kind in ("phone", "board") or (kind is None and ram < 6 * 10**9)
    arch = arch or ("arm64" if mobile else "x86_64")
    os_name = os_name or ("android" if kind == "phone" or (kind is None and mobile) else "linux")
    kind = kind or kind_for(ram, arch, os_name)
    default_simd = ("NEON", "DOTPROD") if arch == "arm64" else ("AVX", "AVX2", "FMA", "F16C")
    cores = cores or {"phone": 4, "board": 4, "laptop": 8, "desktop": 8, "server": 32}[kind]
    return Device(kind, ram, cores, arch, os_name, simd if simd is not None else default_simd, gpus, npu)


def detect() -> Device:
    """This machine."""
    from .engines.base import physical_cores

    arch = {"aarch64": "arm64", "amd64": "x86_64"}.get(platform.machine().lower(), platform.machine().lower())
    os_name = "android" if "ANDROID_ROOT" in os.environ else platform.system().lower()
    ram, notes = _ram()
    simd = _simd(arch, os_name)
    gpus = _gpus(arch, os_name)
    kind = kind_for(ram, arch, os_name)
    return Device(
        kind, ram, physical_cores(), arch, os_name, simd, gpus, False, available_ram(), _engine_features(), True,
        tuple(notes),
    )


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _ram() -> tuple[int, list[str]]:
    notes = []
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = int(_sysctl("hw.memsize") or 0)
    limit = _read("/sys/fs/cgroup/memory.max").strip()
    if limit.isdigit() and 0 < int(limit) < total:
        notes.append(f"a container memory limit of {int(limit) / 2**30:.1f} GiB applies (the host has more)")
        total = int(limit)
    return total, notes


def system_ram() -> int:
    """Bytes of memory this process may use: the machine's, or its container's limit."""
    return _ram()[0]


def available_ram() -> int | None:
    """Bytes the kernel says a new process could take now (Linux's MemAvailable); None elsewhere."""
    m = re.search(r"^MemAvailable:\s+(\d+) kB", _read("/proc/meminfo"), re.M)
    return int(m.group(1)) * 1024 if m else None


def _simd(arch: str, os_name: str) -> tuple[str, ...]:
    cpuinfo = _read("/proc/cpuinfo")
    m = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", cpuinfo, re.M)
    flags = set(m.group(1).split()) if m else set()
    if os_name == "darwin":
        flags |= {f.lower() for f in (_sysctl("machdep.cpu.features") or "").split()}
        if arch == "arm64":
            flags |= {"asimd", "asimddp"} | ({"i8mm"} if _sysctl("hw.optional.arm.FEAT_I8MM") == "1" else set())
    table = _ARM_FLAGS if arch == "arm64" else _X86_FLAGS
    return tuple(name for flag, name in table.items() if flag in flags)


def _gpus(arch: str, os_name: str) -> tuple[str, ...]:
    if os_name == "darwin" and arch == "arm64":
        return ("Apple Silicon GPU (Metal)",)
    found = []
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        m = re.search(r"^Model:\s*(.+)$", _read(str(info)), re.M)
        found.append(f"NVIDIA {m.group(1).strip()}" if m else "NVIDIA GPU")
    if not found:
        for card in sorted(Path("/sys/class/drm").glob("card[0-9]*")):
            vendor = _read(str(card / "device" / "vendor")).strip()
            if vendor in _GPU_VENDORS and "-" not in card.name:
                found.append(f"{_GPU_VENDORS[vendor]} GPU ({card.name})")
    return tuple(found)


def _sysctl(key: str) -> str | None:
    try:
        done = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=3)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _engine_features() -> tuple[str, ...]:
    """The features llama.cpp reports as used ('AVX2 = 1'), from llama_print_system_info."""
    try:
        from .engines.llamacpp.engine import system_features

        return system_features()
    except Exception:  # noqa: BLE001 - a missing or broken engine only loses this detail
        return ()
