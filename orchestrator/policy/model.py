"""The policy file schema (version 1), and reading it from YAML with line numbers.

Every model forbids unknown keys and runs in strict mode, so a misspelt key or
a value of the wrong type is an error with a location, never a silent default.
A setting left out of a tenant is inherited from ``defaults``; see
``docs/policies.md`` for the merge rules.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from runtimes.wire.errors import ConfigError

__all__ = [
    "ACTIONS",
    "Action",
    "Defaults",
    "Locator",
    "PolicyDocument",
    "Rule",
    "Tenant",
    "parse_document",
]

Action = Literal[
    "call",
    "create_resource",
    "execute_resource",
    "list_resources",
    "delete_resource",
    "describe",
    "list_bridges",
    "stats",
    "cancel",
]
ACTIONS: tuple[str, ...] = get_args(Action)
RESOURCE_ACTIONS = frozenset(
    {"create_resource", "execute_resource", "list_resources", "delete_resource"}
)

# Patterns are named so the loader can explain a mismatch in words (PATTERN_HINTS).
NAME_RE = r"^[a-z0-9][a-z0-9_-]{0,62}$"
PRINCIPAL_RE = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$"
RULE_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
GLOB_RE = r"^[a-z0-9_.*?\[\]!-]{1,64}$"
MODEL_GLOB_RE = r"^[A-Za-z0-9_.*?\[\]!-]{1,100}$"
COMMAND_GLOB_RE = r"^[a-z0-9_.*?\[\]!-]{1,64}:[a-z0-9_.*?\[\]!-]{1,64}$|^\*$"
DIGEST_RE = r"^sha256:[0-9a-f]{64}$"
ENV_RE = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
HOSTPORT_RE = (
    r"^(\*\.)?([A-Za-z0-9-]{1,63}\.)*[A-Za-z0-9-]{1,63}:[0-9]{1,5}$|^\[[0-9A-Fa-f:.]+\]:[0-9]{1,5}$"
)

PATTERN_HINTS = {
    NAME_RE: "a name of lowercase letters, digits, '_' and '-' (at most 63)",
    PRINCIPAL_RE: "a principal name of letters, digits, '_', '.', '@' and '-'",
    RULE_NAME_RE: "a rule name of letters, digits, '_', '.' and '-'",
    GLOB_RE: "a lowercase name or glob such as 'dspy' or 'lang*'",
    MODEL_GLOB_RE: "a model name or glob such as 'tiny-bert' or 'bert-*'",
    COMMAND_GLOB_RE: "a command glob 'namespace:operation' such as 'custom:*' or 'common:ping'",
    DIGEST_RE: (
        "a token digest 'sha256:<64 lowercase hex digits>', never a plain token "
        "(compute one with `mlbridge policy hash-token`)"
    ),
    ENV_RE: "an environment variable name such as OPENAI_API_KEY",
    HOSTPORT_RE: "a 'host:port' such as 'api.openai.com:443' or '*.example.com:443'",
}

Name = Annotated[str, StringConstraints(pattern=NAME_RE)]
BridgeKey = Annotated[str, StringConstraints(pattern=NAME_RE + r"|^\*$")]
PrincipalName = Annotated[str, StringConstraints(pattern=PRINCIPAL_RE)]
RuleName = Annotated[str, StringConstraints(pattern=RULE_NAME_RE)]
Glob = Annotated[str, StringConstraints(pattern=GLOB_RE)]
ModelGlob = Annotated[str, StringConstraints(pattern=MODEL_GLOB_RE)]
CommandGlob = Annotated[str, StringConstraints(pattern=COMMAND_GLOB_RE)]
TokenDigest = Annotated[str, StringConstraints(pattern=DIGEST_RE)]
EnvName = Annotated[str, StringConstraints(pattern=ENV_RE)]
NonNegInt = Annotated[int, Field(ge=0)]


def _port_in_range(value: str) -> str:
    port = int(value.rsplit(":", 1)[1])
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is outside 1-65535")
    return value


HostPort = Annotated[str, StringConstraints(pattern=HOSTPORT_RE), AfterValidator(_port_in_range)]

_MEMORY_RE = re.compile(r"^([0-9]+)([kmg]?)$", re.IGNORECASE)
_MEMORY_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
MIN_MEMORY_BYTES = 6 << 20  # docker refuses a memory limit under 6 MiB


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Rule(_Strict):
    """One allow or deny rule. It matches when every condition it names holds.

    A condition on a field the request does not carry (``commands`` on a
    ``list_bridges`` request, say) does not hold, so the rule does not match.
    """

    name: RuleName
    effect: Literal["allow", "deny"]
    actions: list[Action] | None = None
    bridges: list[Glob] | None = None
    commands: list[CommandGlob] | None = None
    resource_types: list[Glob] | None = None
    description: str | None = None

    @model_validator(mode="after")
    def _conditions_can_match(self) -> Rule:
        for key in ("actions", "bridges", "commands", "resource_types"):
            if getattr(self, key) == []:
                raise ValueError(f"'{key}' is empty and matches nothing; leave it out to match any")
        if self.commands is not None and self.actions is not None and "call" not in self.actions:
            raise ValueError("'commands' only matches action 'call', which 'actions' leaves out")
        if (
            self.resource_types is not None
            and self.actions is not None
            and not RESOURCE_ACTIONS.intersection(self.actions)
        ):
            raise ValueError(
                "'resource_types' only matches resource actions, which 'actions' leaves out"
            )
        return self


class QuotaSettings(_Strict):
    """Per-tenant quotas. A key left out is inherited; ``null`` means unlimited."""

    max_concurrent_calls: NonNegInt | None = None
    max_calls_per_minute: NonNegInt | None = None
    max_resources: NonNegInt | None = None
    max_workers: NonNegInt | None = None
    max_payload_bytes: NonNegInt | None = None


class BridgeLimits(_Strict):
    """Call deadline and container limits; ``memory`` is bytes or '512m' / '2g'."""

    call_timeout_s: Annotated[float, Field(gt=0, le=86400)] | None = None
    cpus: Annotated[float, Field(gt=0, le=1024)] | None = None
    memory: Annotated[int, Field(ge=MIN_MEMORY_BYTES)] | None = None
    pids: Annotated[int, Field(ge=8, le=1_000_000)] | None = None

    @field_validator("memory", mode="before")
    @classmethod
    def _parse_memory(cls, value: Any) -> Any:
        if isinstance(value, str):
            match = _MEMORY_RE.match(value.strip())
            if not match:
                raise ValueError("memory must be bytes or a size like '512m' or '2g'")
            return int(match.group(1)) * _MEMORY_UNITS[match.group(2).lower()]
        return value


class LimitSettings(BridgeLimits):
    """Limits for every bridge, with per-bridge overrides under ``bridges``."""

    bridges: dict[Name, BridgeLimits] = {}


class NetworkSettings(_Strict):
    """Egress for one bridge: the string ``none`` or ``{allowlist: [host:port, ...]}``."""

    allowlist: list[HostPort] = []

    @model_validator(mode="before")
    @classmethod
    def _from_word(cls, value: Any) -> Any:
        if value == "none":
            return {}
        if isinstance(value, str):
            raise ValueError(
                "network must be 'none' or {allowlist: [host:port, ...]}; "
                "unrestricted egress is not supported"
            )
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> NetworkSettings:
        if "allowlist" in self.model_fields_set and not self.allowlist:
            raise ValueError("empty allowlist; write 'none' for no egress")
        return self


class SecretSource(_Strict):
    """Where one secret's value comes from: exactly one of value, env, file."""

    value: SecretStr | None = None
    env: EnvName | None = None
    file: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_scalar(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"value": value}
        if isinstance(value, bool | int | float):
            raise ValueError("secret values must be strings; quote the value")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretSource:
        given = [k for k in ("value", "env", "file") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("a secret needs exactly one of 'value', 'env' or 'file'")
        if self.file is not None and not self.file.startswith("/"):
            raise ValueError("a secret 'file' must be an absolute path")
        return self


class Settings(_Strict):
    """What a tenant may do and use; every key is optional and inherited when left out."""

    bridges: list[Glob] | None = None
    #: Models of the model store (added by the operator) the tenant may load; its own exports always.
    models: list[ModelGlob] | None = None
    rules: list[Rule] | None = None
    quotas: QuotaSettings | None = None
    limits: LimitSettings | None = None
    network: dict[BridgeKey, NetworkSettings] | None = None
    secrets: dict[Name, dict[EnvName, SecretSource]] | None = None

    @field_validator("bridges", "models", mode="before")
    @classmethod
    def _star(cls, value: Any) -> Any:
        return ["*"] if value == "*" else value

    @model_validator(mode="after")
    def _unique_rule_names(self) -> Settings:
        names = [rule.name for rule in self.rules or []]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"rule names must be unique; repeated: {', '.join(dupes)}")
        return self


class Defaults(Settings):
    """Settings every tenant inherits unless it sets the same key itself."""


class PrincipalConfig(_Strict):
    """A named caller inside a tenant, with its own tokens."""

    tokens: list[TokenDigest] = []
    token_env: EnvName | None = None
    description: str | None = None


class Tenant(Settings):
    """One tenant: its tokens, optional named principals, and its settings."""

    tokens: list[TokenDigest] = []
    token_env: EnvName | None = None
    principals: dict[PrincipalName, PrincipalConfig] = {}
    description: str | None = None


class PolicyDocument(_Strict):
    """The whole policy file."""

    version: Literal[1]
    anonymous: Name | None = None
    defaults: Defaults = Defaults()
    tenants: dict[Name, Tenant] = {}

    @field_validator("tenants", "defaults", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value


KNOWN_KEYS: frozenset[str] = frozenset(
    name
    for model in (
        Rule,
        QuotaSettings,
        LimitSettings,
        NetworkSettings,
        SecretSource,
        Tenant,
        PrincipalConfig,
        PolicyDocument,
    )
    for name in model.model_fields
)


# --- reading YAML with locations -------------------------------------------------

Loc = tuple[str | int, ...]
Problem = tuple[Loc, str]
Located = tuple[int, int, str, str]
_MERGE_TAG = "tag:yaml.org,2002:merge"


class Locator:
    """Maps a location path (``("tenants", "bob", "rules", 0)``) to a line in the file."""

    def __init__(self, root: yaml.Node | None, source: str) -> None:
        self.root = root
        self.source = source

    def where(self, loc: Loc) -> tuple[int, int]:
        """1-based (line, column) of the deepest node on ``loc`` that exists."""
        node = self.root
        if node is None:
            return (1, 1)
        mark = node.start_mark
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                found = None
                for key, value in node.value:  # the last duplicate wins, as in the data
                    if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                        found = (key, value)
                if found is None:
                    continue
                key, node = found
                mark = key.start_mark
            elif (
                isinstance(node, yaml.SequenceNode)
                and isinstance(part, int)
                and 0 <= part < len(node.value)
            ):
                node = node.value[part]
                mark = node.start_mark
        return (mark.line + 1, mark.column + 1)

    def error(self, problems: Sequence[Problem], located: Sequence[Located] = ()) -> ConfigError:
        """One :class:`ConfigError` explaining every problem with ``file:line:col``.

        Args:
            problems: (location path, sentence) pairs, placed with :meth:`where`.
            located: problems already placed, as (line, column, path, sentence).
        """
        items = [*located, *((*self.where(loc), _dotted(loc), msg) for loc, msg in problems)]
        items.sort(key=lambda item: (item[0], item[1]))
        lines = [
            f"  {self.source}:{line}:{col}: {path + ': ' if path else ''}{msg}"
            for line, col, path, msg in items
        ]
        count = f"{len(items)} error{'s' if len(items) != 1 else ''}"
        details = {
            "errors": [
                {"line": line, "column": col, "path": path, "message": msg}
                for line, col, path, msg in items
            ],
            "source": self.source,
        }
        return ConfigError(
            f"invalid policy file {self.source} ({count}):\n" + "\n".join(lines), details=details
        )


def _dotted(loc: Loc) -> str:
    """``tenants.acme.rules[0]``; a path ending in ``[key]`` is about a key, shown by its mapping."""
    if loc and loc[-1] == "[key]":
        loc = loc[:-2]
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "[key]":
            out += f".{part}" if out else str(part)
    return out


def _explain(err: ErrorDetails) -> Problem:
    """A pydantic error as (location, sentence); never quotes the offending value."""
    loc: Loc = tuple(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        close = difflib.get_close_matches(key, KNOWN_KEYS, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return (*loc, "[key]"), f"unknown key '{key}'{hint}"
    if kind == "missing":
        return loc[:-1], f"missing required key '{loc[-1]}'"
    if kind == "string_pattern_mismatch":
        hint = PATTERN_HINTS.get(err.get("ctx", {}).get("pattern", ""), "a different format")
        what = (
            f"invalid name '{loc[-2]}'" if len(loc) > 1 and loc[-1] == "[key]" else "invalid value"
        )
        return loc, f"{what}: expected {hint}"
    if kind in ("value_error", "assertion_error"):
        return loc, str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return loc, str(err["msg"])


def _duplicate_keys(node: yaml.Node | None, path: Loc, out: list[Located], seen: set[int]) -> None:
    # PyYAML silently keeps the last of two equal keys; in a security policy
    # that hides mistakes (two `tokens:` lists, say), so it is an error here.
    if node is None or id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for key, value in node.value:
            if key.tag == _MERGE_TAG or not isinstance(key, yaml.ScalarNode):
                continue
            if key.value in keys:
                mark = key.start_mark
                out.append(
                    (mark.line + 1, mark.column + 1, _dotted(path), f"duplicate key '{key.value}'")
                )
            keys.add(key.value)
            _duplicate_keys(value, (*path, key.value), out, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _duplicate_keys(item, (*path, index), out, seen)


def parse_document(text: str, *, source: str = "<string>") -> tuple[PolicyDocument, Locator]:
    """Parse and validate policy YAML.

    Args:
        text: the YAML text.
        source: file name used in error messages.

    Returns:
        The validated document and a :class:`Locator` for later (semantic) errors.

    Raises:
        ConfigError: listing every problem found, each with ``file:line:column``.
    """
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        duplicates: list[Located] = []
        _duplicate_keys(root, (), duplicates, set())
        locator = Locator(root, source)
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            f"invalid policy file {source}: {where}: YAML syntax error: {problem}"
        ) from None
    finally:
        loader.dispose()
    if data is None:
        raise ConfigError(
            f"invalid policy file {source}: the file is empty; it needs at least 'version: 1'"
        )
    try:
        document = PolicyDocument.model_validate(data)
    except ValidationError as exc:
        # `from None`: the ValidationError's text quotes input values (tokens, secrets).
        raise locator.error([_explain(e) for e in exc.errors()], duplicates) from None
    except RecursionError:
        raise ConfigError(f"invalid policy file {source}: recursive YAML aliases") from None
    if duplicates:
        raise locator.error([], duplicates)
    return document, locator
