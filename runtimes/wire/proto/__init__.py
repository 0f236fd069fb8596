"""Generated gRPC code of the runtime protocol and the shared stream events (``make protos``)."""
