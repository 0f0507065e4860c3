"""llama-server's own endpoints, for the clients written against it (``/tokenize``, ``/detokenize``)."""
