"""Ollama's dialect: generation and chat (``routes``), the store verbs (``admin``), their bodies (``schemas``)."""
