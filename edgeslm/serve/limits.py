"""What one request may ask for; every bound here is a refusal with a clear message, not a crash."""

from __future__ import annotations

from ..engines.base import MAX_STOP as MAX_STOP  # a generation's limits, kept with it
from ..engines.base import MAX_STOP_CHARS as MAX_STOP_CHARS

MAX_BODY = 8 * 2**20  # bytes of request body (--max-body)
MAX_MESSAGES = 1024
MAX_NAME = 256
MAX_TOP_LOGPROBS = 20
MAX_EMBED_INPUTS = 2048  # texts in one embeddings request (OpenAI's limit); embedded 64 per decode
MAX_EMBED_TOKENS = 1 << 20  # token ids across one embeddings request
MAX_CONTEXT_IDS = 1 << 20  # Ollama's ``context`` list; the model's context bounds it further
MAX_TOOL_CALLS = 128  # calls in one assistant message sent back
