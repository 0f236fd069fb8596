"""Names both halves agree on outside the protocols."""

#: Entry point group where bridges are registered (``mock = "runtimes.mock:MockBridge"``).
BRIDGE_ENTRY_POINTS = "mlbridge.bridges"
