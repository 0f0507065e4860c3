"""OpenAI's dialect under ``/v1``: chat, completions, embeddings, models (``routes``), the Responses
API (``responses``), their bodies (``schemas``)."""
