"""Anthropic's Messages API (``POST /v1/messages``), for the ``anthropic`` SDK and Claude Code."""
