"""Settings of the custom-code bridge, read once from the environment.

The runtime package depends on grpcio and protobuf only, so this is a plain
frozen dataclass rather than a pydantic-settings class. Every field names its
environment variable; a value that is not a positive integer is a
:class:`~runtimes.wire.errors.ConfigError` naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

from runtimes.wire.errors import ConfigError

__all__ = ["HARD_MAX_OUTPUT_BYTES", "CustomSettings"]

KIB = 1024
MIB = 1024 * KIB

#: No call may raise its per-stream stdout/stderr cap above this.
HARD_MAX_OUTPUT_BYTES = 1 * MIB

DEFAULT_SCRATCH = "/tmp/mlbridge-scratch"


@dataclass(frozen=True)
class CustomSettings:
    """Limits and paths of the custom bridge (env var in each field's comment)."""

    scratch: str = DEFAULT_SCRATCH
    """MLBRIDGE_SCRATCH: the worker's scratch space (files, user code's WORKDIR)."""
    max_output_bytes: int = 64 * KIB
    """MLBRIDGE_CUSTOM_MAX_OUTPUT_BYTES: default cap of captured stdout and of stderr, each."""
    max_result_bytes: int = 4 * MIB
    """MLBRIDGE_CUSTOM_MAX_RESULT_BYTES: largest JSON result (or chunk) user code may return."""
    max_code_bytes: int = 1 * MIB
    """MLBRIDGE_CUSTOM_MAX_CODE_BYTES: largest source accepted by run / register_type."""
    max_file_bytes: int = 64 * MIB
    """MLBRIDGE_CUSTOM_MAX_FILE_BYTES: largest single file an upload may write."""
    max_upload_bytes: int = 256 * MIB
    """MLBRIDGE_CUSTOM_MAX_UPLOAD_BYTES: total file bytes one upload may write (unpacked)."""
    max_upload_entries: int = 10_000
    """MLBRIDGE_CUSTOM_MAX_UPLOAD_ENTRIES: files plus directories one upload may create."""
    max_download_bytes: int = 8 * MIB
    """MLBRIDGE_CUSTOM_MAX_DOWNLOAD_BYTES: total bytes one download may return."""
    max_list_entries: int = 10_000
    """MLBRIDGE_CUSTOM_MAX_LIST_ENTRIES: most entries one list_files reply holds."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CustomSettings:
        """Build settings from ``env`` (default ``os.environ``).

        Raises:
            ConfigError: a variable is set but is not a positive integer, or
                the output cap is above :data:`HARD_MAX_OUTPUT_BYTES`.
        """
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        scratch = env.get("MLBRIDGE_SCRATCH", "").strip()
        if scratch:
            values["scratch"] = scratch
        for f in fields(cls):
            if f.name == "scratch":
                continue
            var = f"MLBRIDGE_CUSTOM_{f.name.upper()}"
            raw = env.get(var, "").strip()
            if not raw:
                continue
            try:
                num = int(raw)
            except ValueError:
                num = 0
            if num <= 0:
                raise ConfigError(f"{var} must be a positive integer (bytes or a count), got {raw!r}")
            values[f.name] = num
        out = cls(**values)  # type: ignore[arg-type]
        if out.max_output_bytes > HARD_MAX_OUTPUT_BYTES:
            raise ConfigError(
                f"MLBRIDGE_CUSTOM_MAX_OUTPUT_BYTES is {out.max_output_bytes}, above the hard "
                f"maximum of {HARD_MAX_OUTPUT_BYTES} bytes"
            )
        return out
