"""The ``hmedit`` CLI: app.py is the entry point; one module per command, each with ``register(app)``."""
