"""The web page: its files (``web/``) under ``/ui/`` (``routes``) and the read-only views it draws (``views``)."""
