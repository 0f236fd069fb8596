"""The ``dataset`` resource: rows to fine-tune on, sent inline or uploaded as a file.

Rows arrive either in the config (``{"rows": [{"text": ..., "label": ...}]}``)
or as the bytes of an attachment of the create call, read by the ``datasets``
library's own builders (csv, json, jsonl, parquet, text) from a private
temporary directory, offline, into memory: nothing is left on disk and no
hub is asked. Everything a training run relies on is checked here, once, so
a run can refuse a mismatch before it trains: the caps on rows and bytes, the
text column (strings, or lists of words for token classification) and the
label column (ints, strings, floats, or one tag per word), with no missing
values. An optional ``split`` holds out a test set for evaluation.

A dataset made from an attachment cannot be re-created on a new worker (the
orchestrator keeps configs, not uploads): create it again with its file.
"""

from __future__ import annotations

import json
import math
from typing import Any, ClassVar

from ..core import CallContext, InvalidArgument
from .base import TransformersResource
from .train_rows import LabelKind, check_columns, datasets_lib, read_attachment

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_ROWS", "FORMATS", "DatasetResource"]

#: The most rows and bytes a dataset may hold; a config may lower them, never raise them.
DEFAULT_MAX_ROWS = 200_000
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
#: Attachment formats and the ``datasets`` builder that reads each.
FORMATS: dict[str, str] = {"csv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet", "text": "text"}
_MAX_HEAD = 1000

_CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "rows": {"type": "array", "description": "the rows, objects of column -> value (or use 'attachment')"},
        "attachment": {"type": "string", "description": "name of a file attached to the create call"},
        "format": {"type": "string", "enum": sorted(FORMATS),
                   "description": "the attachment's format (default: from its extension)"},
        "text_column": {"type": "string", "description": "the input text column (default 'text')"},
        "label_column": {"type": "string", "description": "the label column (default 'label'; absent: no labels)"},
        "split": {"type": "object", "description": "{test_size: fraction or count, seed}: hold out a test set"},
        "max_rows": {"type": "integer", "description": f"cap on rows (at most {DEFAULT_MAX_ROWS})"},
        "max_bytes": {"type": "integer", "description": f"cap on the rows' or file's bytes (at most "
                                                        f"{DEFAULT_MAX_BYTES})"},
    },
    "additionalProperties": False,
}


def _cap(config: dict[str, Any], key: str, ceiling: int) -> int:
    value = config.get(key, ceiling)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= ceiling:
        raise InvalidArgument(f"dataset {key} must be an integer from 1 to {ceiling}, got {value!r}")
    return value


def _json_safe(value: Any) -> Any:
    """Arrow hands back plain Python values, except NaN for a missing number, which JSON cannot carry."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


class DatasetResource(TransformersResource):
    """Rows for fine-tuning, sent by the client or uploaded as a file."""

    type_name: ClassVar[str] = "dataset"
    description: ClassVar[str] = ("Rows to fine-tune on: {rows: [...]} or {attachment, format: csv|json|jsonl|"
                                  "parquet|text}; text_column, label_column, split {test_size, seed}, max_rows, "
                                  "max_bytes; execute {head, offset, split, shuffle} returns rows")
    config_schema: ClassVar[dict[str, Any]] = _CONFIG_SCHEMA

    def create(self, ctx: CallContext) -> None:
        cfg = self.config
        if ("rows" in cfg) == ("attachment" in cfg):
            raise InvalidArgument("a dataset needs exactly one of 'rows' (a list of objects) or 'attachment' "
                                  "(the name of a file attached to this call)")
        max_rows, max_bytes = _cap(cfg, "max_rows", DEFAULT_MAX_ROWS), _cap(cfg, "max_bytes", DEFAULT_MAX_BYTES)
        lib = datasets_lib()
        if "rows" in cfg:
            self.source, self.format = "rows", "rows"
            data = self._from_rows(lib, cfg["rows"], max_rows, max_bytes)
        else:
            self.source = f"attachment:{cfg['attachment']}"
            data, self.format, self.size_bytes = read_attachment(lib, ctx, cfg["attachment"], cfg.get("format"),
                                                                 max_bytes, FORMATS)
        if data.num_rows > max_rows:
            raise InvalidArgument(f"the dataset has {data.num_rows} rows, over its cap of {max_rows} (max_rows); "
                                  f"send fewer rows or raise max_rows (at most {DEFAULT_MAX_ROWS})")
        if data.num_rows == 0:
            raise InvalidArgument("the dataset has no rows")
        self.text_column: str = cfg.get("text_column", "text")
        explicit_label = "label_column" in cfg
        self.label_column: str | None = cfg.get("label_column", "label")
        if self.label_column not in data.column_names and not explicit_label:
            self.label_column = None  # no labels: fine for causal-lm and masked-lm
        self.label_kind: LabelKind
        self.text_kind, self.label_kind, self.label_names = check_columns(
            data[self.text_column] if self.text_column in data.column_names else None,
            data[self.label_column] if self.label_column and self.label_column in data.column_names else None,
            self.text_column, self.label_column, data.column_names)
        self.data = data
        self.train, self.test = data, None
        if "split" in cfg:
            self.train, self.test = self._split(data, cfg["split"])

    def _from_rows(self, lib: Any, rows: list[Any], max_rows: int, max_bytes: int) -> Any:
        if len(rows) > max_rows:
            raise InvalidArgument(f"{len(rows)} rows sent, over the dataset's cap of {max_rows} (max_rows)")
        self.size_bytes = len(json.dumps(rows, separators=(",", ":")).encode())
        if self.size_bytes > max_bytes:
            raise InvalidArgument(f"the rows are {self.size_bytes} bytes, over the dataset's cap of {max_bytes} "
                                  f"(max_bytes); send fewer rows or upload a file")
        if not rows:
            raise InvalidArgument("the dataset has no rows")
        keys: set[str] | None = None
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise InvalidArgument(f"dataset row {i} must be an object of column -> value, "
                                      f"got {type(row).__name__}")
            if keys is None:
                keys = set(row)
            elif set(row) != keys:
                raise InvalidArgument(f"dataset row {i} has columns {sorted(row)}, row 0 has {sorted(keys)}; "
                                      f"every row needs the same columns")
        try:
            return lib.Dataset.from_list(rows)
        except (ValueError, TypeError) as exc:  # pyarrow.ArrowInvalid is a ValueError
            raise InvalidArgument(f"the rows cannot form a table (a column mixes types?): {exc}") from None

    @staticmethod
    def _split(data: Any, spec: Any) -> tuple[Any, Any]:
        if not isinstance(spec, dict) or set(spec) - {"test_size", "seed"}:
            raise InvalidArgument("dataset split must be {test_size: a fraction in (0, 1) or a row count, seed}")
        size, seed = spec.get("test_size", 0.2), spec.get("seed", 0)
        ok_frac = isinstance(size, float) and 0 < size < 1
        ok_count = isinstance(size, int) and not isinstance(size, bool) and 1 <= size < data.num_rows
        if not (ok_frac or ok_count):
            raise InvalidArgument(f"dataset split test_size must be a fraction in (0, 1) or a row count from 1 to "
                                  f"{data.num_rows - 1}, got {size!r}")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise InvalidArgument(f"dataset split seed must be a non-negative integer, got {seed!r}")
        if data.num_rows < 2:
            raise InvalidArgument("a dataset of one row cannot be split")
        try:
            parts = data.train_test_split(test_size=size, seed=seed)
        except ValueError as exc:
            raise InvalidArgument(f"cannot split the dataset: {exc}") from None
        return parts["train"], parts["test"]

    def splits(self) -> dict[str, Any]:
        """The ``datasets.Dataset`` of each split: ``train``, and ``test`` when one was held out."""
        return {"train": self.train} | ({"test": self.test} if self.test is not None else {})

    def execute(self, ctx: CallContext, inputs: dict[str, Any]) -> dict[str, Any]:
        """``{head: n (default 5), offset: k, split: train|test|all, shuffle: seed}``: rows back, as a view."""
        unknown = sorted(set(inputs) - {"head", "offset", "split", "shuffle"})
        if unknown:
            raise InvalidArgument(f"dataset inputs: unexpected field(s) {', '.join(unknown)}; "
                                  f"fields: head, offset, split, shuffle")
        name = inputs.get("split", "all")
        parts = {"all": self.data, **self.splits()}
        if name not in parts:
            raise InvalidArgument(f"dataset split {name!r} does not exist; splits: {', '.join(parts)}")
        data = parts[name]
        head, offset, shuffle = inputs.get("head", 5), inputs.get("offset", 0), inputs.get("shuffle")
        for key, value, low, high in (("head", head, 0, _MAX_HEAD), ("offset", offset, 0, data.num_rows),
                                      ("shuffle", shuffle, 0, 2**32 - 1)):
            if key == "shuffle" and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise InvalidArgument(f"dataset input {key} must be an integer from {low} to {high}, got {value!r}")
        if shuffle is not None:
            data = data.shuffle(seed=shuffle, keep_in_memory=True)
        rows = data.select(range(offset, min(offset + head, data.num_rows)), keep_in_memory=True).to_list()
        return {"rows": _json_safe(rows), "split": name, "total": data.num_rows, "offset": offset}

    def info(self) -> dict[str, Any]:
        if getattr(self, "data", None) is None:
            return {}
        return {
            "source": self.source,
            "format": self.format,
            "rows": self.data.num_rows,
            "bytes": self.size_bytes,
            "columns": list(self.data.column_names),
            "features": {k: str(v) for k, v in self.data.features.items()},
            "text_column": self.text_column,
            "label_column": self.label_column,
            "label_kind": self.label_kind,
            "label_names": self.label_names,
            "splits": {k: v.num_rows for k, v in self.splits().items()},
        }

    def delete(self, ctx: CallContext) -> None:
        self.data = self.train = self.test = None

