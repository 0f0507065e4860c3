"""``edgeslm serve``: the HTTP server's parts (keys and roles, the audit log)."""
