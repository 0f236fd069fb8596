"""mlbridge runtimes: the in-container half of mlbridge.

`runtimes.core` is the framework-agnostic runtime SDK; every other
subpackage is one bridge (one framework). Nothing here imports the
orchestrator, docker, or (in core) any ML framework.
"""

__version__ = "0.1.0"
