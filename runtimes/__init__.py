"""mlbridge runtimes: the in-container half of mlbridge.

`runtimes.wire` is the wire kernel both halves share; `runtimes.core` is the
framework-agnostic runtime SDK; every other subpackage is one bridge (one
framework). Nothing here imports the orchestrator, docker, or (in core and
wire) any ML framework.
"""

from .wire.version import __version__

__all__ = ["__version__"]
