"""The compiled policy: who a token is, what they may do, and their limits.

A :class:`Policy` is immutable; reloading a policy file means building a new
one and swapping it in. Everything here is pure: no gRPC, no docker.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

from runtimes.wire.errors import (
    ConfigError,
    InternalError,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
)

from ..config import WorkerLimits
from .model import (
    ACTIONS,
    Loc,
    NetworkSettings,
    PolicyDocument,
    PrincipalConfig,
    Problem,
    QuotaSettings,
    Rule,
    SecretSource,
    Settings,
    Tenant,
    parse_document,
)
from .quotas import Quotas

__all__ = ["Decision", "NetworkPolicy", "Policy", "Principal", "load_policy", "parse_policy"]

ANONYMOUS = "anonymous"
BUILTIN_CALL_TIMEOUT_S = 60.0
PERMISSIVE_CALL_TIMEOUT_S = 600.0
BUILTIN_QUOTAS = Quotas(
    max_concurrent_calls=8,
    max_calls_per_minute=600,
    max_resources=100,
    max_workers=4,
    max_payload_bytes=4 << 20,
)
MIN_ENV_TOKEN_CHARS = 16
MAX_TOKEN_CHARS = 4096
MAX_POLICY_BYTES = 1 << 20
MAX_SECRET_FILE_BYTES = 64 << 10
UNAUTHENTICATED_MESSAGE = "missing or unknown token"
_COMMAND_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}:[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the tenant, and the named caller inside it."""

    tenant: str
    principal: str


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of an authorization check and the rule that decided it."""

    allowed: bool
    rule: str


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    """A bridge's egress: ``mode == "none"``, or ``"allowlist"`` of host:port entries."""

    mode: Literal["none", "allowlist"] = "none"
    allowlist: tuple[str, ...] = ()


class PolicyProblems(ConfigError):
    """Problems found after schema validation; ``problems`` holds (location, sentence)."""

    def __init__(self, problems: list[Problem]) -> None:
        text = "; ".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in problems)
        super().__init__(f"invalid policy: {text}")
        self.problems = problems


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


#: Commands that show a worker's insides (its code paths and timings): an allow rule grants one only
#: by naming it in ``commands``; a glob such as ``common:*``, or a rule without commands, never does.
EXPLICIT_COMMANDS = frozenset({"common:profile"})


def _matches(
    rule: Rule, action: str, bridge: str | None, command: str | None, rtype: str | None
) -> bool:
    def holds(globs: list[str] | None, value: str | None) -> bool:
        return globs is None or (value is not None and any(fnmatchcase(value, g) for g in globs))

    return (
        (rule.actions is None or action in rule.actions)
        and holds(rule.bridges, bridge)
        and holds(rule.commands, command)
        and holds(rule.resource_types, rtype)
    )


class Policy:
    """A validated policy document, compiled for fast lookups.

    Build one with :func:`load_policy`, :func:`parse_policy` or :meth:`permissive`.

    Args:
        document: the validated policy file.
        source: where it came from, for messages.
        source_hash: SHA-256 hex of the file's bytes.
        environ: where ``token_env`` and ``{env: ...}`` secrets are read;
            ``os.environ`` when left out.

    Raises:
        PolicyProblems: a :class:`ConfigError` listing every semantic problem.
    """

    def __init__(
        self,
        document: PolicyDocument,
        *,
        source: str = "<memory>",
        source_hash: str = "",
        environ: Mapping[str, str] | None = None,
        _any_token_is_anonymous: bool = False,
    ) -> None:
        self.document = document
        self.source = source
        self.source_hash = source_hash
        self._environ = environ
        self._any_token_is_anonymous = _any_token_is_anonymous
        self._tokens: list[tuple[bytes, Principal]] = []
        problems: list[Problem] = []
        if document.anonymous is not None and document.anonymous not in document.tenants:
            problems.append(
                (("anonymous",), f"tenant '{document.anonymous}' is not defined under tenants")
            )
        owners: dict[bytes, Principal] = {}
        for name, tenant in document.tenants.items():
            callers: list[tuple[Loc, str, PrincipalConfig | Tenant]] = [
                (("tenants", name), name, tenant)
            ]
            for pname, pconf in tenant.principals.items():
                loc: Loc = ("tenants", name, "principals", pname)
                if pname in (ANONYMOUS, name):
                    problems.append(((*loc, "[key]"), f"principal name '{pname}' is reserved"))
                callers.append((loc, pname, pconf))
            for loc, pname, caller in callers:
                for token_loc, digest in self._caller_digests(loc, caller, problems):
                    if digest in owners:
                        other = owners[digest]
                        msg = f"token already used by tenant '{other.tenant}' principal '{other.principal}'"
                        problems.append((token_loc, msg))
                        continue
                    owners[digest] = Principal(name, pname)
                    self._tokens.append((digest, owners[digest]))
        if problems:
            raise PolicyProblems(problems)
        self._quotas = {name: self._resolve_quotas(t) for name, t in document.tenants.items()}

    def _caller_digests(
        self, loc: Loc, caller: PrincipalConfig | Tenant, problems: list[Problem]
    ) -> list[tuple[Loc, bytes]]:
        out: list[tuple[Loc, bytes]] = [
            ((*loc, "tokens", i), bytes.fromhex(d.removeprefix("sha256:")))
            for i, d in enumerate(caller.tokens)
        ]
        if caller.token_env is not None:
            value = self._env().get(caller.token_env, "")
            if len(value) >= MIN_ENV_TOKEN_CHARS:
                out.append(((*loc, "token_env"), _digest(value)))
            else:
                state = (
                    "is not set" if not value else f"holds under {MIN_ENV_TOKEN_CHARS} characters"
                )
                problems.append(
                    ((*loc, "token_env"), f"environment variable {caller.token_env} {state}")
                )
        return out

    # --- construction -----------------------------------------------------------

    @classmethod
    def permissive(cls) -> Policy:
        """The no-policy mode: every call is tenant ``default``, principal ``anonymous``.

        Every action is allowed (rule ``permissive``), quotas are unlimited, the
        call timeout is 600 s, networks are ``none`` and no secrets are given.
        Any token, or none, is accepted.
        """
        document = PolicyDocument.model_validate(
            {
                "version": 1,
                "anonymous": "default",
                "defaults": {
                    "bridges": "*",
                    "models": "*",
                    "rules": [{"name": "permissive", "effect": "allow"}],
                    "quotas": dict.fromkeys(QuotaSettings.model_fields),
                    "limits": {"call_timeout_s": PERMISSIVE_CALL_TIMEOUT_S},
                },
                "tenants": {"default": {}},
            }
        )
        return cls(
            document, source="<permissive>", source_hash="permissive", _any_token_is_anonymous=True
        )

    # --- identity and permission ------------------------------------------------

    @property
    def tenants(self) -> tuple[str, ...]:
        """Names of the configured tenants."""
        return tuple(self.document.tenants)

    @property
    def is_permissive(self) -> bool:
        """True for :meth:`permissive` policies."""
        return self._any_token_is_anonymous

    def authenticate(self, token: str | None) -> Principal:
        """The principal a bearer token belongs to.

        A leading ``"Bearer "`` is stripped. Every known digest is compared in
        constant time, all of them on every call, so timing tells nothing.
        With ``anonymous: <tenant>`` set, a missing token means principal
        ``anonymous`` of that tenant; an unknown token is still refused.

        Raises:
            Unauthenticated: "missing or unknown token", and nothing more.
        """
        anonymous = self.document.anonymous
        if self._any_token_is_anonymous and anonymous is not None:
            return Principal(anonymous, ANONYMOUS)
        if token and token[:7].lower() == "bearer ":
            token = token[7:].strip()
        if not token:
            if anonymous is not None:
                return Principal(anonymous, ANONYMOUS)
            raise Unauthenticated(UNAUTHENTICATED_MESSAGE)
        if len(token) > MAX_TOKEN_CHARS:
            raise Unauthenticated(UNAUTHENTICATED_MESSAGE)
        digest = _digest(token)
        found: Principal | None = None
        for candidate, principal in self._tokens:
            if hmac.compare_digest(candidate, digest) and found is None:
                found = principal
        if found is None:
            raise Unauthenticated(UNAUTHENTICATED_MESSAGE)
        return found

    def authorize(
        self,
        principal: Principal,
        *,
        action: str,
        bridge: str | None = None,
        command: str | None = None,
        resource_type: str | None = None,
    ) -> Decision:
        """Decide one request. Deny rules win over allow rules; no match denies.

        Names are compared case-insensitively. Before the rules, a ``call``
        without a well-formed ``namespace:operation`` command is denied
        (rule ``invalid-command``) and a bridge outside the tenant's
        ``bridges`` is denied (rule ``bridge-not-allowed``).

        Args:
            principal: from :meth:`authenticate`.
            action: one of :data:`ACTIONS`.
            bridge: the bridge addressed; ``None`` for bridge-less actions.
            command: the command of a ``call``.
            resource_type: the resource type, for resource actions.

        Returns:
            ``Decision(allowed, rule)``; ``rule`` is ``default-deny`` when no rule matched.
        """
        if action not in ACTIONS:
            raise InternalError(
                f"unknown policy action {action!r}; expected one of {', '.join(ACTIONS)}"
            )
        tenant = self._tenant(principal.tenant)
        if action == "call" and (not command or not _COMMAND_RE.fullmatch(command)):
            return Decision(False, "invalid-command")
        bridge = bridge.lower() if bridge else None
        command = command.lower() if command else None
        rtype = resource_type.lower() if resource_type else None
        if bridge is not None and not self.bridge_allowed(principal.tenant, bridge):
            return Decision(False, "bridge-not-allowed")
        matched = [r for r in self._rules(tenant) if _matches(r, action, bridge, command, rtype)]
        if command in EXPLICIT_COMMANDS and not self.is_permissive:
            matched = [r for r in matched if r.effect == "deny" or command in (c.lower() for c in r.commands or ())]
        for effect in ("deny", "allow"):
            for rule in matched:
                if rule.effect == effect:
                    return Decision(effect == "allow", rule.name)
        return Decision(False, "default-deny")

    def check(self, principal: Principal, **request: Any) -> Decision:
        """:meth:`authorize`, raising when denied.

        Raises:
            PermissionDenied: with ``details={"rule": rule}``.
        """
        decision = self.authorize(principal, **request)
        if not decision.allowed:
            target = ", ".join(f"{k} {v}" for k, v in request.items() if v)
            raise PermissionDenied(
                f"denied by policy rule '{decision.rule}' ({target})",
                details={"rule": decision.rule},
            )
        return decision

    def bridge_allowed(self, tenant: str, bridge: str) -> bool:
        """Whether the tenant's ``bridges`` list admits ``bridge``."""
        globs = self._pick(tenant, "bridges") or []
        return any(fnmatchcase(bridge.lower(), g) for g in globs)

    def model_allowed(self, tenant: str, model: str) -> bool:
        """Whether the tenant's ``models`` list admits the operator's model ``model`` (case-sensitive globs)."""
        globs = self._pick(tenant, "models") or []
        return any(fnmatchcase(model, g) for g in globs)

    def model_shared(self, model: str) -> bool:
        """Whether every tenant of the policy may load the operator's model ``model``."""
        return all(self.model_allowed(t, model) for t in self.document.tenants)

    def visible_bridges(self, tenant: str, names: Iterable[str]) -> list[str]:
        """The subset of ``names`` the tenant may use, for ``ListBridges``."""
        return [n for n in names if self.bridge_allowed(tenant, n)]

    # --- limits -----------------------------------------------------------------

    def quotas_for(self, tenant: str) -> Quotas:
        """The tenant's effective quotas (``None`` fields are unlimited)."""
        self._tenant(tenant)
        return self._quotas[tenant]

    def deadline_s(self, tenant: str, bridge: str, client_deadline_s: float | None) -> float:
        """Seconds a call may run: the policy's ``call_timeout_s``, or the client's if shorter.

        ``None``, ``0`` (the proto default) and infinity mean the client set none.

        Raises:
            InvalidArgument: a negative or NaN client deadline.
        """
        policy_s = self._limit(tenant, bridge, "call_timeout_s") or BUILTIN_CALL_TIMEOUT_S
        if client_deadline_s is None or client_deadline_s == 0:
            return float(policy_s)
        if math.isnan(client_deadline_s) or client_deadline_s < 0:
            raise InvalidArgument(
                f"deadline must be a positive number of seconds, not {client_deadline_s}"
            )
        return float(min(policy_s, client_deadline_s))

    def limits_for(self, tenant: str, bridge: str) -> WorkerLimits:
        """The tenant's own worker limits for ``bridge``: ``cpus``, ``memory_bytes``, ``pids`` (None: not set)."""
        return WorkerLimits(
            cpus=self._limit(tenant, bridge, "cpus"),
            memory_bytes=self._limit(tenant, bridge, "memory"),
            pids=self._limit(tenant, bridge, "pids"),
        )

    def network_for(self, tenant: str, bridge: str) -> NetworkPolicy:
        """Egress for the tenant's workers of ``bridge``; ``none`` unless the policy says otherwise."""
        found: NetworkSettings | None = None
        for layer in self._layers(tenant):
            for key in (bridge.lower(), "*"):
                if found is None and layer.network is not None:
                    found = layer.network.get(key)
        if found is None or not found.allowlist:
            return NetworkPolicy()
        return NetworkPolicy("allowlist", tuple(found.allowlist))

    def secrets_for(self, tenant: str, bridge: str, declared: Iterable[str]) -> dict[str, str]:
        """Secret values for the tenant's workers of ``bridge``, limited to what the bridge declares.

        Values are read now (environment, file), so a rotated secret is picked
        up by the next worker started.

        Raises:
            ConfigError: a configured source is missing; names the variable or file.
        """
        sources: dict[str, SecretSource] = {}
        for layer in reversed(self._layers(tenant)):
            sources.update((layer.secrets or {}).get(bridge.lower(), {}))
        return {
            name: self._secret_value(tenant, bridge, name, sources[name])
            for name in dict.fromkeys(declared)
            if name in sources
        }

    def check_secrets(self) -> list[str]:
        """Try every configured secret source; one sentence per problem, no values."""
        problems: list[str] = []
        for name, tenant in self.document.tenants.items():
            bridges = set((tenant.secrets or {}) | (self.document.defaults.secrets or {}))
            for bridge in sorted(bridges):
                for secret in self.secret_names(name, bridge):
                    try:
                        self.secrets_for(name, bridge, [secret])
                    except ConfigError as exc:
                        problems.append(exc.message)
        return problems

    # --- helpers ----------------------------------------------------------------

    def _env(self) -> Mapping[str, str]:
        return os.environ if self._environ is None else self._environ

    def _tenant(self, name: str) -> Tenant:
        try:
            return self.document.tenants[name]
        except KeyError:
            raise InternalError(f"unknown tenant {name!r}") from None

    def _layers(self, tenant: str) -> tuple[Settings, ...]:
        return (self._tenant(tenant), self.document.defaults)

    def _pick(self, tenant: str, key: str) -> Any:
        for layer in self._layers(tenant):
            if getattr(layer, key) is not None:
                return getattr(layer, key)
        return None

    def _rules(self, tenant: Tenant) -> list[Rule]:
        return tenant.rules if tenant.rules is not None else (self.document.defaults.rules or [])

    def _limit(self, tenant: str, bridge: str, key: str) -> Any:
        for layer in self._layers(tenant):
            if layer.limits is None:
                continue
            per_bridge = layer.limits.bridges.get(bridge.lower())
            for limits in (per_bridge, layer.limits):
                if limits is not None and getattr(limits, key) is not None:
                    return getattr(limits, key)
        return None

    def _resolve_quotas(self, tenant: Tenant) -> Quotas:
        values: dict[str, int | None] = {}
        for key in QuotaSettings.model_fields:
            values[key] = getattr(BUILTIN_QUOTAS, key)
            for layer in (tenant, self.document.defaults):
                if layer.quotas is not None and key in layer.quotas.model_fields_set:
                    values[key] = getattr(layer.quotas, key)
                    break
        return Quotas(**values)

    def secret_names(self, tenant: str, bridge: str) -> list[str]:
        """Names of the secrets the tenant's policy gives workers of ``bridge``."""
        return [n for layer in self._layers(tenant) for n in (layer.secrets or {}).get(bridge, {})]

    def _secret_value(self, tenant: str, bridge: str, name: str, source: SecretSource) -> str:
        where = f"secret {name} of tenant '{tenant}', bridge '{bridge}'"
        if source.value is not None:
            return source.value.get_secret_value()
        if source.env is not None:
            value = self._env().get(source.env, "")
            if not value:
                raise ConfigError(f"{where}: environment variable {source.env} is not set")
            return value
        path = Path(source.file or "")
        data = read_bounded_file(path, MAX_SECRET_FILE_BYTES, f"{where}: {path}")
        try:
            return data.decode("utf-8").removesuffix("\n").removesuffix("\r")
        except UnicodeDecodeError:
            raise ConfigError(f"{where}: {path} is not UTF-8 text") from None


def read_bounded_file(path: Path, limit: int, what: str, *, refuse_world_writable: bool = False) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; ``what`` names it in errors.

    Raises:
        ConfigError: unreadable, not a regular file, writable by every user (when
            refused), or larger than ``limit``; the message says which and how to fix it.
    """
    try:
        with path.open("rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ConfigError(f"{what} is not a regular file")
            if refuse_world_writable and info.st_mode & stat.S_IWOTH:
                raise ConfigError(f"{what} is writable by every user; run: chmod o-w {path}")
            data = handle.read(limit + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {what}: {exc.strerror}") from None
    if len(data) > limit:
        raise ConfigError(f"{what} is larger than {limit} bytes")
    return data


def parse_policy(
    text: str, *, source: str = "<string>", environ: Mapping[str, str] | None = None
) -> Policy:
    """Build a :class:`Policy` from YAML text (``source_hash`` is over its UTF-8 bytes).

    Raises:
        ConfigError: every problem, each with ``source:line:column``.
    """
    return _build(text.encode("utf-8"), text, source, environ)


def _build(data: bytes, text: str, source: str, environ: Mapping[str, str] | None) -> Policy:
    document, locator = parse_document(text, source=source)
    digest = hashlib.sha256(data).hexdigest()
    try:
        return Policy(document, source=source, source_hash=digest, environ=environ)
    except PolicyProblems as exc:
        raise locator.error(exc.problems) from None


def load_policy(
    path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
) -> Policy:
    """Read, validate and compile a policy file.

    Args:
        path: the YAML file.
        environ: where ``token_env`` and ``{env: ...}`` secrets are read; ``os.environ`` by default.

    Returns:
        The policy; ``policy.source_hash`` is the SHA-256 hex of the file's bytes.

    Raises:
        ConfigError: the file is missing, unreadable, writable by everyone,
            too large, not UTF-8, or invalid; every problem is listed with
            ``file:line:column``.
    """
    source = os.fspath(path)
    data = read_bounded_file(Path(source), MAX_POLICY_BYTES, f"policy file {source}",
                             refuse_world_writable=True)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"policy file {source} is not UTF-8 (byte {exc.start})") from None
    return _build(data, text, source, environ)
