"""Reading and checking a dataset's rows: the attachment reader and the column rules.

Kept apart from the resource (:mod:`.datasets`) so the rules a training run
relies on (what a text column and a label column may hold) read in one
place. Every refusal is an :class:`InvalidArgument` naming the row and the
fix, raised when the dataset is created rather than minutes into a run.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from ..core import CallContext, InvalidArgument
from ..wire.errors import flatten_exception

__all__ = ["EXTENSIONS", "LabelKind", "TextKind", "check_columns", "datasets_lib", "read_attachment"]

#: What a text column holds: one string per row, or a list of words (token classification).
TextKind = Literal["str", "words"]
#: What a label column holds: class ids, class names, numbers (regression), one tag per word, or nothing.
LabelKind = Literal["int", "str", "float", "tags", None]

#: A file's extension -> its format, when the config names none.
EXTENSIONS = {".csv": "csv", ".json": "json", ".jsonl": "jsonl", ".parquet": "parquet", ".txt": "text",
              ".text": "text"}


def datasets_lib() -> Any:
    """The ``datasets`` library, quiet and offline (imported on first use, so describe stays fast)."""
    import datasets

    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    return datasets


def read_attachment(lib: Any, ctx: CallContext, name: str, fmt: str | None, max_bytes: int,
                    formats: Mapping[str, str]) -> tuple[Any, str, int]:
    """Load the attachment ``name`` of this call with the ``datasets`` builder of its format.

    The bytes go to a private temporary directory (with the builder's cache),
    are read into memory and the directory is removed, whatever happens.

    Returns:
        ``(dataset, format, size in bytes)``.
    """
    data = ctx.attachments.get(name)
    if data is None:
        attached = ", ".join(sorted(ctx.attachments)) or "none"
        raise InvalidArgument(f"dataset attachment {name!r} is not attached to this call (attached: {attached}); "
                              f"send the file as an attachment of the create call under that name")
    if len(data) > max_bytes:
        raise InvalidArgument(f"attachment {name!r} is {len(data)} bytes, over the dataset's cap of {max_bytes} "
                              f"(max_bytes)")
    if fmt is None:
        fmt = EXTENSIONS.get(Path(name).suffix.lower())
        if fmt is None:
            raise InvalidArgument(f"cannot tell the format of {name!r} from its extension; set format to one of "
                                  f"{', '.join(sorted(formats))}")
    if fmt not in formats:
        raise InvalidArgument(f"dataset format {fmt!r} is not supported; formats: {', '.join(sorted(formats))}")
    tmp = Path(tempfile.mkdtemp(prefix="mlb-dataset-"))
    try:
        path = tmp / f"data.{fmt}"
        path.write_bytes(data)
        try:
            loaded = lib.load_dataset(formats[fmt], data_files=str(path), split="train",
                                      cache_dir=str(tmp / "cache"), keep_in_memory=True)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the file's fault
            root: BaseException = exc
            while root.__cause__ is not None:  # the builder wraps the parser's error, which says what is wrong
                root = root.__cause__
            raise InvalidArgument(f"could not read attachment {name!r} as {fmt}: "
                                  f"{flatten_exception(root)[:500]}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return loaded, fmt, len(data)


def _text_kind(values: Sequence[Any], column: str) -> TextKind:
    kind: TextKind | None = None
    for i, value in enumerate(values):
        this: TextKind | None = "str" if isinstance(value, str) else (
            "words" if isinstance(value, list) and all(isinstance(w, str) for w in value) else None)
        if this is None:
            raise InvalidArgument(f"dataset row {i}: text column {column!r} must hold a string (or a list of "
                                  f"words), got {type(value).__name__}; fill or drop that row")
        if kind is not None and this != kind:
            raise InvalidArgument(f"dataset row {i}: text column {column!r} mixes strings and word lists")
        kind = this
    assert kind is not None
    return kind


def _label_of(value: Any) -> LabelKind:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float" if math.isfinite(value) else None
    if isinstance(value, str):
        return "str"
    if isinstance(value, list) and value and all(_label_of(v) in ("int", "str") for v in value):
        return "tags"
    return None


def _label_kind(values: Sequence[Any], column: str) -> LabelKind:
    kinds: set[LabelKind] = set()
    for i, value in enumerate(values):
        kind = _label_of(value)
        if kind is None:
            shown = "nothing" if value is None else repr(value)[:60]
            raise InvalidArgument(f"dataset row {i}: label column {column!r} holds {shown}; a label "
                                  f"is a class id, a class name, a number, or a list of tags (one per word)")
        kinds.add(kind)
    if kinds == {"int", "float"}:
        return "float"
    if len(kinds) != 1:
        raise InvalidArgument(f"label column {column!r} mixes {' and '.join(sorted(str(k) for k in kinds))} "
                              f"labels; use one kind")
    return kinds.pop()


def _words(text: Any) -> list[str]:
    return text if isinstance(text, list) else str(text).split()


def check_columns(text: Sequence[Any] | None, labels: Sequence[Any] | None, text_column: str,
                  label_column: str | None, columns: Sequence[str]) -> tuple[TextKind, LabelKind, list[str]]:
    """Check the text and label columns of a dataset.

    Returns:
        ``(text kind, label kind, sorted label names)``; the names are the
        string labels (or tags) seen, empty for numeric labels.
    """
    shown = ", ".join(columns)
    if text is None:
        raise InvalidArgument(f"the dataset has no text column {text_column!r} (columns: {shown}); "
                              f"set text_column to the column holding the input text")
    text_kind = _text_kind(text, text_column)
    if label_column is None:
        return text_kind, None, []
    if labels is None:
        raise InvalidArgument(f"the dataset has no label column {label_column!r} (columns: {shown}); "
                              f"set label_column to the column holding the labels, or leave it out")
    if label_column == text_column:
        raise InvalidArgument(f"text_column and label_column are both {text_column!r}")
    kind = _label_kind(labels, label_column)
    names: set[str] = set()
    if kind == "tags":
        for i, (words, tags) in enumerate(zip(text, labels, strict=True)):
            if len(_words(words)) != len(tags):
                raise InvalidArgument(f"dataset row {i}: {len(tags)} tags for {len(_words(words))} words; token "
                                      f"classification needs one tag per word (text split on whitespace)")
            names.update(t for t in tags if isinstance(t, str))
    elif kind == "str":
        names.update(labels)
    elif text_kind == "words":
        raise InvalidArgument(f"text column {text_column!r} holds word lists, which only token classification "
                              f"takes; its labels must then be lists of tags, one per word")
    return text_kind, kind, sorted(names)
