"""Who may do what, and what was done: API keys and roles (``keys``), the hash-chained audit log
(``audit``) and its compliance report and anchor (``compliance``). The server checks them, and
``deploy`` and ``sync`` write and read them; none of it speaks HTTP."""
