"""What the dspy bridge's resources share with it: the default LM and the counters.

The resources (:mod:`.resources`) reach their bridge through this base class,
and the bridge (:mod:`.bridge`) adds the commands on top, so the two modules
import in one direction only.
"""

from __future__ import annotations

import threading
from typing import Any

from runtimes.core import Bridge


class DSPyBase(Bridge):
    """Per-worker DSPy state: the default LM and execution counters."""

    def __init__(self) -> None:
        super().__init__()
        self.default_lm: Any = None
        self.default_lm_info: dict[str, Any] | None = None
        self._counts: dict[str, int] = {"executions": 0, "optimizations": 0}
        self._client_secrets: set[str] = set()
        self._lock = threading.Lock()

    def count(self, name: str) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + 1
