"""KV cache types: the facts (bytes per element, ggml type, flash attention), and the one spelling
users give them in (``f16``, ``q8_0``, or ``k=q8_0,v=f16``) on the CLI, in a Modelfile and in
``EDGESLM_KV_CACHE_TYPE`` (Ollama's ``OLLAMA_KV_CACHE_TYPE``, llama.cpp's ``-ctk``/``-ctv``).

A quantized V cache needs flash attention in llama.cpp (its non-flash path reads V transposed, row
by row); a quantized K cache does not, but llama.cpp's CPU kernels for it are the flash ones too, so
edgeslm turns flash attention on whenever either half is quantized, and leaves llama.cpp's own
choice (auto) for F16. The F32 cache (exact comparisons in tests) turns it off: the CPU flash
kernel takes Q in F16.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ..config import DEFAULT_ENGINE, ENV_KV_TYPE
from ..errors import InvalidParameterError


class KVType(str, Enum):
    """The cache types llama.cpp's ``--cache-type-k/-v`` accept that edgeslm offers."""

    F32 = "f32"
    F16 = "f16"
    BF16 = "bf16"
    Q8_0 = "q8_0"
    Q5_1 = "q5_1"
    Q5_0 = "q5_0"
    Q4_1 = "q4_1"
    Q4_0 = "q4_0"
    IQ4_NL = "iq4_nl"

    @property
    def ggml_type(self) -> int:
        return GGML_TYPE[self]

    @property
    def bytes_per_element(self) -> float:
        block, size = BLOCK[self]
        return size / block

    @property
    def quantized(self) -> bool:
        return BLOCK[self][0] > 1

    @property
    def block(self) -> int:
        """Elements per block: a head's key/value length must be a multiple of it."""
        return BLOCK[self][0]


# ggml's type ids (ggml.h) and (elements, bytes) per block (ggml-common.h)
GGML_TYPE = {KVType.F32: 0, KVType.F16: 1, KVType.Q4_0: 2, KVType.Q4_1: 3, KVType.Q5_0: 6, KVType.Q5_1: 7,
             KVType.Q8_0: 8, KVType.IQ4_NL: 20, KVType.BF16: 30}
BLOCK = {KVType.F32: (1, 4), KVType.F16: (1, 2), KVType.BF16: (1, 2), KVType.Q8_0: (32, 34),
         KVType.Q5_1: (32, 24), KVType.Q5_0: (32, 22), KVType.Q4_1: (32, 20), KVType.Q4_0: (32, 18),
         KVType.IQ4_NL: (32, 18)}


@dataclass(frozen=True)
class KVCache:
    """The K and V halves' types; llama.cpp's default is F16 for both."""

    k: KVType = KVType.F16
    v: KVType = KVType.F16

    @classmethod
    def parse(cls, text: str) -> KVCache:
        """``q8_0`` (both halves), or ``k=q8_0,v=f16`` (either half; the other stays F16)."""
        spec = text.strip().lower()
        if "=" not in spec:
            kind = _kv_type(spec)
            return cls(kind, kind)
        halves: dict[str, KVType] = {}
        for part in spec.split(","):
            side, _, value = part.partition("=")
            if side.strip() not in ("k", "v") or side.strip() in halves:
                raise InvalidParameterError(
                    f"KV cache type '{text[:60]}' is not understood; write one type (q8_0) or k=TYPE,v=TYPE",
                    params="kv_type")
            halves[side.strip()] = _kv_type(value.strip())
        return cls(halves.get("k", KVType.F16), halves.get("v", KVType.F16))

    @property
    def default(self) -> bool:
        return self == KVCache()

    @property
    def quantized(self) -> bool:
        return self.k.quantized or self.v.quantized

    @property
    def flash_attention(self) -> bool | None:
        """True: on (a quantized half needs it); False: off (F32); None: llama.cpp decides."""
        if self.quantized:
            return True
        return False if KVType.F32 in (self.k, self.v) else None

    def bytes_per_cell(self, n_kv_heads: int, key_length: int, value_length: int) -> float:
        """One token's K and V in one layer."""
        return n_kv_heads * (key_length * self.k.bytes_per_element + value_length * self.v.bytes_per_element)

    def check_head(self, key_length: int, value_length: int, model: str) -> None:
        """A quantized half needs the head's length to be whole blocks."""
        for half, kind, length in (("K", self.k, key_length), ("V", self.v, value_length)):
            if length % kind.block:
                raise InvalidParameterError(
                    f"{model}'s attention heads are {length} wide, which a {kind.value} {half} cache (blocks of "
                    f"{kind.block}) cannot hold; use f16 or q8_0 with a model whose heads are multiples of 32",
                    params="kv_type")

    def __str__(self) -> str:
        return self.k.value if self.k == self.v else f"k={self.k.value},v={self.v.value}"


def _kv_type(value: str) -> KVType:
    try:
        return KVType(value)
    except ValueError:
        raise InvalidParameterError(
            f"KV cache type '{value[:40]}' is unknown; valid: {', '.join(t.value for t in KVType)}",
            params="kv_type") from None


def kv_cache_for(runtime: str, stored: str | None, env: str | None) -> KVCache:
    """The KV cache a load gets when none is asked: the model's ``PARAMETER kv_type``, else the
    environment's (``EDGESLM_KV_CACHE_TYPE``) on llama.cpp, the one runtime with a choice; else F16."""
    if stored:
        return KVCache.parse(stored)
    if env and runtime == DEFAULT_ENGINE:
        try:
            return KVCache.parse(env)
        except InvalidParameterError as exc:
            raise InvalidParameterError(f"{ENV_KV_TYPE} in the environment: {exc}", params="kv_type") from None
    return KVCache()


F16_CACHE = KVCache()  # llama.cpp's default
