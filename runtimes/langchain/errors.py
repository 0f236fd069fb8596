"""LangChain failures as typed mlbridge errors that say what to fix.

Each class keeps the wire ``code`` of its core parent (so the orchestrator's
one code -> gRPC status table maps it) and adds a stable
``details["reason"]`` a client may branch on. :func:`translate` is the
bridge's ``translate_error`` hook: it recognises provider SDK errors (OpenAI,
Anthropic, Google GenAI; by status code and class name, so no provider
package has to be importable), output-parser failures and LangGraph's
recursion limit, and masks every tenant secret in the text it passes on.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from runtimes.core.redaction import redact
from runtimes.wire.errors import (
    ConfigError,
    FrameworkError,
    InvalidArgument,
    MLBridgeError,
    PermissionDenied,
    QuotaExceeded,
    Unavailable,
    clip_message,
    exception_chain,
    flatten_exception,
)

__all__ = [
    "FakeScriptExhausted",
    "MissingSecret",
    "OutputParserFailure",
    "PromptInputError",
    "ProviderAuthError",
    "ProviderBadRequest",
    "ProviderError",
    "ProviderForbidden",
    "ProviderRateLimited",
    "ProviderUnreachable",
    "RecursionLimit",
    "ToolFailure",
    "translate",
]

# Longest framework message passed on (provider errors can be pages long).
MAX_ERROR_CHARS = 4000


class _Reasoned:
    """Mixin: puts the class's ``reason`` first in ``details`` (over a reason the details carry)."""

    reason: ClassVar[str] = ""

    def __init__(self, message: str = "", *, details: dict[str, Any] | None = None) -> None:
        rest = {k: v for k, v in (details or {}).items() if k != "reason"}
        super().__init__(message, details={"reason": self.reason, **rest})  # type: ignore[call-arg]


class MissingSecret(_Reasoned, ConfigError):
    """A model names a tenant secret (its API key) that this worker was not given."""

    reason = "MISSING_SECRET"


class ProviderAuthError(_Reasoned, ConfigError):
    """The provider refused the key (401)."""

    reason = "PROVIDER_AUTH"


class ProviderForbidden(_Reasoned, PermissionDenied):
    """403: from the provider, or from the egress proxy for a target off the allowlist."""

    reason = "PROVIDER_FORBIDDEN"


class ProviderRateLimited(_Reasoned, QuotaExceeded):
    """429 from the provider."""

    reason = "PROVIDER_RATE_LIMIT"


class ProviderBadRequest(_Reasoned, InvalidArgument):
    """400/404/422: the request (model name, parameters, messages) was refused."""

    reason = "PROVIDER_BAD_REQUEST"


class ProviderUnreachable(_Reasoned, Unavailable):
    """No connection to the provider (no egress, allowlist, DNS, timeout)."""

    reason = "PROVIDER_UNREACHABLE"


class ProviderError(_Reasoned, FrameworkError):
    """Any other provider failure (5xx, malformed stream)."""

    reason = "PROVIDER_ERROR"


class OutputParserFailure(_Reasoned, FrameworkError):
    """The model's output did not parse as the chain's parser wants."""

    reason = "OUTPUT_PARSER"


class PromptInputError(_Reasoned, InvalidArgument):
    """A run's input lacks variables its prompt needs."""

    reason = "PROMPT_VARIABLES"


class ToolFailure(_Reasoned, FrameworkError):
    """A code-defined tool raised; details carry the user-frame traceback."""

    reason = "TOOL_ERROR"


class RecursionLimit(_Reasoned, FrameworkError):
    """An agent or graph ran more steps than its recursion limit allows."""

    reason = "RECURSION_LIMIT"


class FakeScriptExhausted(_Reasoned, FrameworkError):
    """The fake model was asked for more replies than its script holds."""

    reason = "FAKE_SCRIPT_EXHAUSTED"


_EGRESS_HINT = ("workers reach providers only through the tenant's egress allowlist: add the provider's "
                "host:port to the policy's network.langchain.allowlist")


def _clip(text: str) -> str:
    return clip_message(text, MAX_ERROR_CHARS)


def _status(exc: BaseException) -> int | None:
    for attr in ("status_code", "code", "status"):
        value = getattr(exc, attr, None)
        if isinstance(value, int) and 100 <= value < 600:
            return value
    return None


def _provider_error(exc: BaseException, text: str, details: dict[str, Any]) -> MLBridgeError | None:
    module = type(exc).__module__.split(".")[0]
    name = type(exc).__name__
    if module not in ("openai", "anthropic", "google", "httpx", "httpcore"):
        return None
    details = {**details, "provider_module": module}
    if name in ("APIConnectionError", "APITimeoutError", "ConnectError", "ConnectTimeout", "ReadTimeout",
                "ProxyError", "RemoteProtocolError"):
        return ProviderUnreachable(f"cannot reach the model provider: {text}; {_EGRESS_HINT}", details=details)
    status = _status(exc)
    if status is None:
        return ProviderError(f"model provider error: {text}", details=details) if module != "httpx" else None
    details["status"] = status
    if status == 401:
        return ProviderAuthError(f"the provider refused the API key (401): {text}; check the tenant secret "
                                 f"the model's api_key_secret names", details=details)
    if status == 403:
        return ProviderForbidden(f"forbidden (403): {text}; if it says 'not on the egress allowlist', "
                                 f"{_EGRESS_HINT}", details=details)
    if status == 429:
        return ProviderRateLimited(f"the provider is rate limiting this key (429): {text}; retry later "
                                   f"or lower max_concurrency", details=details)
    if status in (400, 404, 409, 413, 422):
        return ProviderBadRequest(f"the provider refused the request ({status}): {text}; check the model "
                                  f"name and parameters", details=details)
    return ProviderError(f"model provider error ({status}): {text}", details=details)


def translate(exc: BaseException, secrets: Iterable[str]) -> MLBridgeError | None:
    """The typed error for a LangChain-side exception, with ``secrets`` masked; None: the default."""
    values = list(secrets)
    text = _clip(redact(flatten_exception(exc), values))
    details: dict[str, Any] = {"_flattened": True, "framework_error": type(exc).__name__}
    for cur in exception_chain(exc):
        if isinstance(cur, MLBridgeError) and cur is not exc:
            return cur
        name = type(cur).__name__
        if name == "GraphRecursionError":
            return RecursionLimit(
                f"{text}; the run took more steps than config.recursion_limit allows: raise "
                f"recursion_limit, or check that the model stops calling tools", details=details)
        if name == "OutputParserException":
            return OutputParserFailure(
                f"the model's output did not parse: {text}; ask for that format in the prompt "
                f"(the {{format_instructions}} variable), or use parser 'str'", details=details)
        if name == "KeyError" and "missing variables" in str(cur):
            return PromptInputError(f"the input lacks prompt variables: {_clip(redact(str(cur), values))}; "
                                    f"pass them in 'input' (an object of variable -> value)", details=details)
        found = _provider_error(cur, _clip(redact(flatten_exception(cur), values)), details)
        if found is not None:
            return found
    return FrameworkError(text, details=details)
