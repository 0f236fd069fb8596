"""The wire kernel: the vocabulary both halves of mlbridge share.

The orchestrator (host) and the runtime (inside each worker) speak through
this package and nothing else: the error hierarchy and its code table
(:mod:`.errors`), metadata keys (:mod:`.metadata`), size caps (:mod:`.caps`),
JSON payload handling (:mod:`.payload`), the version (:mod:`.version`) and
the generated gRPC code of the runtime protocol (:mod:`.proto`). It depends on
nothing but the standard library (and, for :mod:`.proto`, protobuf and grpcio);
the host imports nothing else from :mod:`runtimes`.
"""

from .version import __version__

__all__ = ["__version__"]
