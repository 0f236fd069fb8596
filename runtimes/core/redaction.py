"""Keep API keys out of error messages and log records (for bridges that hold provider keys).

Providers echo keys back (OpenAI's 401 says "Incorrect API key provided:
sk-..."), frameworks pass that text through, and some log such errors. So a
bridge that holds tenant keys sends every framework error it flattens through
:func:`redact`, and installs :func:`install_log_redaction` for every log
record made in its process: the tenant's secret values (4
characters or longer) become ``[redacted]``, and so does anything key-shaped
(``sk-...``, ``AIza...``, or the word after "API key ...:"), which also
catches masked forms and keys the tenant never gave us.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Callable, Iterable
from typing import Any

REDACTED = "[redacted]"
MIN_SECRET_LEN = 4

_KEY_LIKE = re.compile(r"\b(?:(?:sk|pk|gsk|xai)[-_][A-Za-z0-9*._\-]{6,}|AIza[A-Za-z0-9_\-]{20,})")
_KEY_PHRASE = re.compile(r"(api[ _-]?key[^:\n]{0,40}:\s*)\S+", re.IGNORECASE)


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret value and anything key-shaped masked."""
    for value in sorted((s for s in secrets if s and len(s) >= MIN_SECRET_LEN), key=len, reverse=True):
        text = text.replace(value, REDACTED)
    text = _KEY_PHRASE.sub(lambda m: m.group(1) + REDACTED, text)
    return _KEY_LIKE.sub(REDACTED, text)


_sources: list[Callable[[], Iterable[str]]] = []


def install_log_redaction(secrets: Callable[[], Iterable[str]]) -> None:
    """Redact every log record of this process with the secrets ``secrets()`` returns.

    Wraps the logging record factory once per process (records are made only
    after the level check, so quiet loggers cost nothing); each further call
    adds one more source of secrets.
    """
    _sources.append(secrets)
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_mlbridge_redacting", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        values = [v for source in list(_sources) for v in source()]
        try:
            text = record.getMessage()
        except Exception:  # a bad format string: keep the template, drop the args
            text = f"{record.msg} (log arguments dropped: they did not fit the format)"
        record.msg = redact(text, values)
        record.args = None
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"), values)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, values)
        return record

    factory._mlbridge_redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
