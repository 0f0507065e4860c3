"""``edgeslm remote``, ``push``, ``pull --from`` and ``sync``: models between this store and a
remote — another ``edgeslm serve`` (``edge``) or a Hugging Face model repo (``hf``) — moving only
the blobs the other side lacks, resuming cut transfers, checking every blob on arrival."""

from __future__ import annotations

from .remotes import Remote, add_remote, get_remote, load_remotes, remove_remote
from .transfer import Transfer, pull, push, sync

__all__ = ["Remote", "Transfer", "add_remote", "get_remote", "load_remotes", "pull", "push", "remove_remote", "sync"]
