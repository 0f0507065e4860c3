"""Human-readable counts and sizes, both ways."""

from __future__ import annotations

import math

_BYTE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
}


def format_params(n_params: int) -> str:
    """A short human count: 134.5M, 1.7B."""
    if n_params >= 1_000_000_000:
        return f"{n_params / 1e9:.1f}B"
    if n_params >= 1_000_000:
        return f"{n_params / 1e6:.1f}M"
    if n_params >= 1_000:
        return f"{n_params / 1e3:.1f}K"
    return str(n_params)


def parse_count(text: str) -> int:
    """Parse '135M', '1.5B', '270m', '8e9' into a parameter count."""
    t = text.strip().upper().replace("_", "")
    scale = {"K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}.get(t[-1:], 1)
    number = t[:-1] if scale != 1 else t
    try:
        value = float(number) * scale
    except ValueError:
        raise ValueError(f"'{text}' is not a parameter count; write e.g. 135M, 1.5B or 8000000000") from None
    return _whole(value, text)


def format_bytes(n: int) -> str:
    """Decimal units, as Ollama and llama.cpp print file sizes: 98.4 MB, 1.2 GB."""
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def format_mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def parse_bytes(text: str) -> int:
    """Parse '80MB', '1.5 GiB', '4G', '1000' into bytes (KB/MB/GB are decimal, KiB/MiB/GiB binary)."""
    t = text.strip().upper().replace(" ", "").replace("_", "")
    i = len(t)
    while i and not (t[i - 1].isdigit() or t[i - 1] == "."):
        i -= 1
    number, unit = t[:i], t[i:]
    if unit not in _BYTE_UNITS:
        raise ValueError(f"'{text}' has an unknown unit '{unit}'; use B, KB, MB, GB, KiB, MiB or GiB")
    try:
        value = float(number) * _BYTE_UNITS[unit]
    except ValueError:
        raise ValueError(f"'{text}' is not a size; write e.g. 80MB, 1.5GB or 4GiB") from None
    return _whole(value, text)


def _whole(value: float, text: str) -> int:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"'{text}' must be a finite, non-negative number")
    return int(round(value))
