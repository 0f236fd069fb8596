"""How both halves run their event loop: uvloop when installed (faster wakeups), else asyncio's own."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any


def run(main: Coroutine[Any, Any, Any]) -> Any:
    """``asyncio.run`` on uvloop unless MLBRIDGE_UVLOOP=0 or uvloop is missing."""
    if os.environ.get("MLBRIDGE_UVLOOP", "1") != "0":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(main)
    return asyncio.run(main)
