"""Tool (function) calling: definitions checked as hostile input (``spec``), and the generic
format any chat model can follow under a grammar (``generic``)."""

from .generic import ToolReply, check_history, new_call_id, parse_reply, prepare, reply_schema
from .spec import Tool, ToolCall, ToolChoice, parse_choice, parse_tools

__all__ = [
    "Tool", "ToolCall", "ToolChoice", "ToolReply", "check_history", "new_call_id", "parse_choice", "parse_reply",
    "parse_tools", "prepare", "reply_schema",
]
