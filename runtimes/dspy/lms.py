"""LM configurations: validation, API-key lookup by secret name, redaction.

An LM config never carries a key. It names the tenant secret that holds one
(``api_key_secret``), or the provider's conventional name is used
(``OPENAI_API_KEY`` for ``openai``). Keys therefore live only in the bridge's
secrets, never in a stored resource spec, a reply, or a log line (framework
errors and log records pass :func:`runtimes.core.redaction.redact`).

Provider ``dummy`` builds ``dspy.utils.DummyLM`` so programs run offline.
With ``stream_tokens: true`` it builds a DummyLM subclass whose engine also
streams (word by word) through DSPy's own streaming path, which plain DummyLM
bypasses in DSPy 3.4; see :mod:`runtimes.dspy.programs`.
"""

from __future__ import annotations

import re
from typing import Any

from runtimes.core.redaction import redact
from runtimes.wire.errors import ConfigError, InvalidArgument

# Conventional secret name per provider (the provider prefix of the model).
PROVIDER_KEYS: dict[str, str] = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "gemini": "GEMINI_API_KEY",
    "groq": "GROQ_API_KEY",
    "mistral": "MISTRAL_API_KEY",
    "cohere": "COHERE_API_KEY",
    "deepseek": "DEEPSEEK_API_KEY",
    "together_ai": "TOGETHERAI_API_KEY",
    "openrouter": "OPENROUTER_API_KEY",
    "fireworks_ai": "FIREWORKS_API_KEY",
    "perplexity": "PERPLEXITYAI_API_KEY",
    "xai": "XAI_API_KEY",
    "azure": "AZURE_API_KEY",
}

LM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "model": {"type": "string", "description": "provider/model, e.g. openai/gpt-4o-mini"},
        "provider": {"type": "string", "description": "defaults to the model's prefix; 'dummy' runs offline"},
        "temperature": {"type": "number"},
        "max_tokens": {"type": "integer"},
        "api_key_secret": {"type": "string", "description": "name of the tenant secret holding the key"},
        "api_key": {"description": "refused: keys live in tenant secrets, named by api_key_secret"},
        "api_base": {"type": "string"},
        "model_type": {"type": "string", "enum": ["chat", "text", "responses"]},
        "num_retries": {"type": "integer"},
        "cache": {"type": "boolean"},
        "answers": {"type": ["array", "object"], "description": "dummy: scripted outputs"},
        "follow_examples": {"type": "boolean", "description": "dummy: answer from matching demos"},
        "stream_tokens": {"type": "boolean", "description": "dummy: stream word by word"},
    },
    "additionalProperties": False,
}

_DUMMY_ONLY = ("answers", "follow_examples", "stream_tokens")


class LMSpec:
    """A validated LM config; :meth:`build` makes the DSPy LM object."""

    def __init__(self, config: dict[str, Any]) -> None:
        if "api_key" in config:
            raise InvalidArgument(
                "an LM config must not carry an API key: store it as a tenant secret and "
                "name that secret with 'api_key_secret'"
            )
        unknown = sorted(set(config) - set(LM_SCHEMA["properties"]))
        if unknown:
            raise InvalidArgument(f"LM config: unexpected field(s): {', '.join(unknown)}")
        model, provider = config.get("model", ""), config.get("provider", "")
        if not isinstance(model, str) or not isinstance(provider, str):
            raise InvalidArgument("LM config: 'model' and 'provider' must be strings")
        provider = provider or (model.split("/", 1)[0] if "/" in model else "")
        if provider == "dummy":
            model = model or "dummy"
        else:
            if not model:
                raise InvalidArgument("LM config needs 'model' (e.g. 'openai/gpt-4o-mini') or provider 'dummy'")
            if not provider:
                raise InvalidArgument(
                    f"LM config: cannot tell the provider of model {model!r}; write it as "
                    f"'provider/model' or set 'provider'"
                )
            if not model.startswith(provider + "/"):
                model = f"{provider}/{model}"
            extra = [k for k in _DUMMY_ONLY if k in config]
            if extra:
                raise InvalidArgument(f"LM config: {', '.join(extra)} only apply to provider 'dummy'")
        answers = config.get("answers", [])
        if provider == "dummy" and not _valid_answers(answers):
            raise InvalidArgument(
                "dummy LM 'answers' must be a list of objects (field -> value) or an object "
                "mapping prompt text to such an object"
            )
        for key in ("max_tokens", "num_retries"):
            if key in config and (not isinstance(config[key], int) or config[key] < 0):
                raise InvalidArgument(f"LM config: {key!r} must be a non-negative integer")
        self.config = config
        self.model = model
        self.provider = provider
        self.secret_name = config.get("api_key_secret") or PROVIDER_KEYS.get(provider, "")

    def build(self, secrets: dict[str, str]) -> Any:
        """Make the DSPy LM. Raises ConfigError naming a missing secret (never a value)."""
        import dspy  # type: ignore[import-untyped]
        from dspy.utils.exceptions import LMConfigurationError  # type: ignore[import-untyped]

        cfg = self.config
        if self.provider == "dummy":
            cls = token_dummy_lm_class() if cfg.get("stream_tokens") else dspy.utils.DummyLM
            return cls(cfg.get("answers", []), follow_examples=bool(cfg.get("follow_examples", False)))
        kwargs: dict[str, Any] = {
            k: cfg[k] for k in ("temperature", "max_tokens", "api_base", "model_type", "num_retries", "cache")
            if k in cfg
        }
        if self.secret_name:
            key = secrets.get(self.secret_name)
            if not key:
                raise ConfigError(
                    f"LM {self.model!r} needs the secret {self.secret_name!r}, which this tenant's "
                    f"worker was not given; add it to the tenant's secrets for the dspy bridge",
                    details={"secret": self.secret_name},
                )
            kwargs["api_key"] = key
        try:
            return dspy.LM(self.model, **kwargs)
        except (ValueError, TypeError, LMConfigurationError) as exc:  # e.g. a temperature the model refuses
            text = redact(f"{type(exc).__name__}: {exc}", secrets.values())
            raise InvalidArgument(f"LM {self.model!r} rejected its config: {text}") from None

    def info(self) -> dict[str, Any]:
        """Safe summary: never the key, nor api_base (it may embed credentials)."""
        cfg = self.config
        out: dict[str, Any] = {"model": self.model, "provider": self.provider,
                               "temperature": cfg.get("temperature")}
        if "max_tokens" in cfg:
            out["max_tokens"] = cfg["max_tokens"]
        if self.secret_name:
            out["api_key_secret"] = self.secret_name
        if self.provider == "dummy":
            out["answers"] = len(cfg.get("answers", []))
            out["stream_tokens"] = bool(cfg.get("stream_tokens", False))
        return out


def _valid_answers(answers: Any) -> bool:
    if isinstance(answers, list):
        return all(isinstance(a, dict) for a in answers)
    if isinstance(answers, dict):
        return all(isinstance(v, dict) for v in answers.values())
    return False


_token_cls: type | None = None


def token_dummy_lm_class() -> type:
    """A DummyLM subclass whose engine streams each answer word by word.

    DSPy 3.4 routes plain DummyLM through a non-streaming shortcut, so
    ``dspy.streamify`` gets only the final prediction. This engine implements
    just the canonical ``complete``/``stream`` pair (no legacy shortcut), so
    DSPy drives it exactly like a real provider engine, stream listeners
    included. Built on first use to keep ``import dspy`` lazy.
    """
    global _token_cls
    if _token_cls is not None:
        return _token_cls
    import dspy  # type: ignore[import-untyped]
    from dspy.clients.engines.dummy_engine import DummyEngine  # type: ignore[import-untyped]
    from dspy.lm15 import StreamDeltaEvent, TextDelta  # type: ignore[import-untyped]

    class _TokenEngine:
        def __init__(self, owner: Any) -> None:
            self._inner = DummyEngine(owner)

        def complete(self, request: Any) -> Any:
            return self._inner.complete(request)

        def stream(self, request: Any) -> Any:
            for event in self._inner.stream(request):
                if event.type == "delta" and event.delta.type == "text":
                    for piece in re.findall(r"\s*\S+|\s+$", event.delta.text):
                        yield StreamDeltaEvent(delta=TextDelta(text=piece, part_index=event.delta.part_index))
                else:
                    yield event

        def close(self) -> None:
            pass

    class _AsyncTokenEngine:
        def __init__(self, sync: _TokenEngine) -> None:
            self.sync = sync

        async def complete(self, request: Any) -> Any:
            return self.sync.complete(request)

        async def stream(self, request: Any) -> Any:
            for event in self.sync.stream(request):
                yield event

        async def aclose(self) -> None:
            pass

    class TokenDummyLM(dspy.utils.DummyLM):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._install()

        def _install(self) -> None:
            self._engine_spec = _TokenEngine(self)
            self._async_engine_spec = _AsyncTokenEngine(self._engine_spec)

        def copy(self, **kwargs: Any) -> Any:
            copied = super().copy(**kwargs)
            copied._install()
            return copied

    _token_cls = TokenDummyLM
    return _token_cls
