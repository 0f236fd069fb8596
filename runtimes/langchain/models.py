"""Chat model settings: validation, the API key from a named tenant secret, building the model.

A model config never carries a key. It names the tenant secret that holds
one (``api_key_secret``), or the provider's conventional name is used
(``OPENAI_API_KEY`` for ``openai``); ``api_key_secret: null`` says the
endpoint needs none (a local OpenAI-compatible server). Keys therefore live
only in the bridge's secrets: never in a stored spec, a reply, an error or a
log line (:mod:`runtimes.core.redaction` masks them).

Providers are built with LangChain's own ``init_chat_model`` (``openai``,
``anthropic``, ``google_genai``; ``openai`` with a ``base_url`` is any
OpenAI-compatible server). Their traffic leaves the worker only through the
tenant's egress allowlist (the proxy variables Configure sets). Provider
``fake`` runs offline: :mod:`runtimes.langchain.fake`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from runtimes.core.redaction import redact
from runtimes.wire.errors import ConfigError, InvalidArgument

from .errors import MissingSecret

__all__ = ["MODEL_SCHEMA", "PROVIDER_KEYS", "ModelSpec"]

#: Conventional secret name per provider.
PROVIDER_KEYS: dict[str, str] = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "google_genai": "GOOGLE_API_KEY",
}
PROVIDER_PACKAGES = {"openai": "langchain-openai", "anthropic": "langchain-anthropic",
                     "google_genai": "langchain-google-genai"}
PROVIDERS = ("fake", *PROVIDER_KEYS)
# Placeholder for endpoints that take no key (the OpenAI client insists on one).
NO_KEY = "unused"

MODEL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "provider": {"type": "string", "enum": list(PROVIDERS),
                     "description": "or a 'provider:' prefix on model"},
        "model": {"type": "string", "description": "e.g. gpt-4o-mini, or openai:gpt-4o-mini"},
        "base_url": {"type": "string", "description": "an OpenAI-compatible (or proxy) endpoint"},
        "api_key_secret": {"type": ["string", "null"],
                           "description": "tenant secret holding the key; null: the endpoint needs none"},
        "api_key": {"description": "refused: keys live in tenant secrets, named by api_key_secret"},
        "temperature": {"type": "number"},
        "max_tokens": {"type": "integer"},
        "timeout_s": {"type": "number"},
        "max_retries": {"type": "integer"},
        "responses": {"type": "array", "description": "fake: replies, each a string or {content, tool_calls}"},
        "cycle": {"type": "boolean", "description": "fake: start the script over when it runs out"},
        "delay_s": {"type": "number", "description": "fake: pause before each streamed token"},
        "usage": {"type": "boolean", "description": "fake: report token usage (words sent and replied)"},
    },
    "additionalProperties": False,
}

_FAKE_ONLY = ("responses", "cycle", "delay_s", "usage")


class ModelSpec:
    """A validated model config; :meth:`build` makes the LangChain chat model."""

    def __init__(self, config: dict[str, Any]) -> None:
        if "api_key" in config:
            raise InvalidArgument("a model config must not carry an API key: store it as a tenant secret "
                                  "and name that secret with 'api_key_secret'")
        unknown = sorted(set(config) - set(MODEL_SCHEMA["properties"]))
        if unknown:
            raise InvalidArgument(f"model config: unexpected field(s): {', '.join(unknown)}")
        model, provider = config.get("model", ""), config.get("provider", "")
        if not isinstance(model, str) or not isinstance(provider, str):
            raise InvalidArgument("model config: 'model' and 'provider' must be strings")
        if not provider and ":" in model:
            provider, model = model.split(":", 1)
        if provider not in PROVIDERS:
            raise InvalidArgument(f"model config: provider {provider!r} is not one of {', '.join(PROVIDERS)} "
                                  f"(an OpenAI-compatible server is provider 'openai' with a base_url)")
        if provider == "fake":
            _check_script(config.get("responses", []))
            delay = config.get("delay_s", 0)
            if not isinstance(delay, (int, float)) or not 0 <= delay <= 5:
                raise InvalidArgument("model config: delay_s must be a number from 0 to 5")
        else:
            if not model:
                raise InvalidArgument(f"model config: provider {provider!r} needs 'model'")
            extra = [k for k in _FAKE_ONLY if k in config]
            if extra:
                raise InvalidArgument(f"model config: {', '.join(extra)} only apply to provider 'fake'")
        base_url = config.get("base_url")
        if base_url is not None:
            parts = urlsplit(base_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise InvalidArgument(f"model config: base_url {base_url!r} must be an http(s) URL")
            if parts.username or parts.password or parts.query:
                raise InvalidArgument("model config: base_url must not carry credentials or a query; "
                                      "keys belong in a tenant secret named by api_key_secret")
        for key in ("max_tokens", "max_retries"):
            if key in config and (not isinstance(config[key], int) or config[key] < 0):
                raise InvalidArgument(f"model config: {key!r} must be a non-negative integer")
        self.config = config
        self.provider = provider
        self.model = model or "fake"
        self.secret_name: str | None = (config["api_key_secret"] if "api_key_secret" in config
                                        else PROVIDER_KEYS.get(provider))

    def build(self, secrets: dict[str, str]) -> Any:
        """Make the chat model.

        Raises:
            MissingSecret: the secret the model names was not given to this worker.
            InvalidArgument: the provider's class refused the settings.
            ConfigError: the provider's package is not installed here.
        """
        cfg = self.config
        if self.provider == "fake":
            from .fake import ScriptedChatModel

            return ScriptedChatModel(script=list(cfg.get("responses", [])), cycle=bool(cfg.get("cycle")),
                                     delay_s=float(cfg.get("delay_s", 0)), usage=bool(cfg.get("usage")))
        kwargs: dict[str, Any] = {k: cfg[k] for k in ("temperature", "max_tokens", "max_retries", "base_url")
                                  if k in cfg}
        if "timeout_s" in cfg:
            kwargs["timeout"] = cfg["timeout_s"]
        kwargs["api_key"] = self._key(secrets)
        from langchain.chat_models import init_chat_model

        try:
            return init_chat_model(self.model, model_provider=self.provider, **kwargs)
        except ImportError as exc:
            raise ConfigError(f"provider {self.provider!r} needs {PROVIDER_PACKAGES[self.provider]}, which this "
                              f"worker's environment lacks ({exc})") from None
        except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
            text = redact(f"{type(exc).__name__}: {exc}", secrets.values())
            raise InvalidArgument(f"model {self.model!r} rejected its config: {text[:2000]}") from None

    def _key(self, secrets: dict[str, str]) -> str:
        if self.secret_name is None:
            if "base_url" not in self.config:
                raise InvalidArgument("api_key_secret: null (no key) is only for a model with a base_url")
            return NO_KEY
        key = secrets.get(self.secret_name)
        if not key:
            raise MissingSecret(
                f"model {self.model!r} needs the secret {self.secret_name!r}, which this tenant's worker "
                f"was not given; add it to the tenant's secrets for the langchain bridge (and to "
                f"bridges.langchain.secrets), or name another with api_key_secret",
                details={"secret": self.secret_name})
        return key

    def info(self) -> dict[str, Any]:
        """Safe summary: never a key."""
        cfg = self.config
        out: dict[str, Any] = {"provider": self.provider, "model": self.model}
        for k in ("base_url", "temperature", "max_tokens"):
            if k in cfg:
                out[k] = cfg[k]
        if self.provider != "fake":
            out["api_key_secret"] = self.secret_name
        else:
            out["responses"] = len(cfg.get("responses", []))
            out["cycle"] = bool(cfg.get("cycle"))
        return out


def _check_script(responses: Any) -> None:
    if not isinstance(responses, list):
        raise InvalidArgument("fake model 'responses' must be a list")
    for i, r in enumerate(responses):
        if isinstance(r, str):
            continue
        if not isinstance(r, dict) or set(r) - {"content", "tool_calls"}:
            raise InvalidArgument(f"fake model response {i} must be a string or {{content, tool_calls}}")
        if not isinstance(r.get("content", ""), str):
            raise InvalidArgument(f"fake model response {i}: 'content' must be a string")
        calls = r.get("tool_calls", [])
        if not isinstance(calls, list) or not all(
                isinstance(c, dict) and isinstance(c.get("name"), str) and isinstance(c.get("args", {}), dict)
                for c in calls):
            raise InvalidArgument(f"fake model response {i}: 'tool_calls' must be a list of {{name, args, id?}}")
