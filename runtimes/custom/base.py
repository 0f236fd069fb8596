"""What the custom bridge's resources share with it: settings, scratch space, code checks.

The resources (:mod:`.resources`) reach their bridge through this base class,
and the bridge (:mod:`.bridge`) adds the commands on top, so the two modules
import in one direction only.
"""

from __future__ import annotations

from runtimes.core import Bridge, InvalidArgument

from .scratch import Scratch
from .settings import CustomSettings


class CustomBase(Bridge):
    """Per-worker settings and scratch space of the custom bridge."""

    def __init__(self, settings: CustomSettings | None = None) -> None:
        super().__init__()
        self.settings = settings or CustomSettings.from_env()
        self.scratch = Scratch(self.settings.scratch)

    def check_code_size(self, code: str) -> None:
        """Refuse source over ``max_code_bytes`` before compiling it."""
        if len(code) > self.settings.max_code_bytes:
            raise InvalidArgument(
                f"code is {len(code)} characters, over the {self.settings.max_code_bytes} limit "
                f"(MLBRIDGE_CUSTOM_MAX_CODE_BYTES); upload large code as files instead"
            )
