"""Policy files: loading and its error messages, authentication, authorization, limits."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import textwrap
from pathlib import Path

import pytest

from orchestrator.config import WorkerLimits
from orchestrator.policy import (
    ACTIONS,
    NetworkPolicy,
    Policy,
    Principal,
    Quotas,
    engine,
    load_policy,
    parse_policy,
)
from orchestrator.policy import cli as policy_cli
from runtimes.wire.errors import (
    ConfigError,
    InternalError,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "policies" / "examples" / "two-tenants.yaml"
DEFAULT = ROOT / "policies" / "default.yaml"


def digest(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def policy(body: str, environ: dict[str, str] | None = None) -> Policy:
    return parse_policy(textwrap.dedent(body), source="test.yaml", environ=environ or {})


def config_error(body: str, environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        policy(body, environ)
    return info.value


RULES = f"""
version: 1
tenants:
  acme:
    tokens: ["{digest("acme-token-0123456789")}"]
    bridges: [mock, dspy]
    rules:
      - name: mock-all
        effect: allow
        bridges: [mock]
      - name: dspy-commands
        effect: allow
        actions: [call]
        commands: ["dspy:*", "common:*"]
      - name: no-dspy-compile
        effect: deny
        commands: ["dspy:compile"]
      - name: no-custom
        effect: deny
        commands: ["custom:*"]
      - name: models-only
        effect: allow
        actions: [create_resource]
        bridges: [dspy]
        resource_types: [model]
"""
ACME = Principal("acme", "acme")


@pytest.fixture
def example() -> Policy:
    return load_policy(EXAMPLE, environ={})


# --- the shipped files ----------------------------------------------------------


def test_example_file_loads_and_its_documented_tokens_authenticate(example: Policy) -> None:
    assert example.tenants == ("alice", "bob")
    assert example.authenticate("alice-example-token") == Principal("alice", "alice")
    assert example.authenticate("bob-example-token") == Principal("bob", "bob")
    assert example.source_hash == hashlib.sha256(EXAMPLE.read_bytes()).hexdigest()


def test_example_tenants_are_kept_apart(example: Policy) -> None:
    alice, bob = Principal("alice", "alice"), Principal("bob", "bob")
    assert example.authorize(alice, action="call", bridge="dspy", command="dspy:predict").allowed
    assert example.authorize(bob, action="call", bridge="dspy", command="dspy:predict") == (
        engine.Decision(False, "bridge-not-allowed")
    )
    assert example.network_for("alice", "dspy").mode == "allowlist"
    assert example.network_for("bob", "dspy") == NetworkPolicy()
    assert example.quotas_for("bob").max_concurrent_calls == 2
    assert example.secrets_for("bob", "dspy", ["EXAMPLE_SETTING"]) == {}


def test_default_policy_is_strict() -> None:
    strict = load_policy(DEFAULT, environ={})
    assert strict.tenants == ()
    for token in ("alice-example-token", "anything", None):
        with pytest.raises(Unauthenticated):
            strict.authenticate(token)
    defaults = strict.document.defaults
    assert defaults.bridges == []
    assert defaults.limits is not None and defaults.limits.call_timeout_s is not None
    assert defaults.limits.call_timeout_s <= 30
    assert defaults.network is not None and not defaults.network["*"].allowlist
    assert defaults.quotas is not None and defaults.quotas.max_concurrent_calls == 2


# --- authentication -------------------------------------------------------------


def test_unknown_missing_and_near_miss_tokens_are_refused_the_same_way(example: Policy) -> None:
    for token in (
        None,
        "",
        "alice-example-tokeN",
        "bob",
        digest("alice-example-token"),
        "x" * 5000,
    ):
        with pytest.raises(Unauthenticated) as info:
            example.authenticate(token)
        assert info.value.message == "missing or unknown token"
        assert info.value.details == {}


def test_bearer_prefix_is_accepted(example: Policy) -> None:
    assert example.authenticate("Bearer alice-example-token").tenant == "alice"


@pytest.mark.parametrize("token", ["alice-example-token", "bob-example-token", "nobody-token"])
def test_every_digest_is_compared_in_constant_time(
    example: Policy, monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    calls: list[int] = []
    real = engine.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(engine.hmac, "compare_digest", counting)
    with contextlib.suppress(Unauthenticated):
        example.authenticate(token)
    assert len(calls) == 2  # both digests, whether the first matched, the second, or none


def test_principals_and_token_env() -> None:
    p = policy(
        f"""
        version: 1
        tenants:
          acme:
            token_env: ACME_TOKEN
            principals:
              ci-bot: {{tokens: ["{digest("ci-token-0123456789")}"]}}
        """,
        environ={"ACME_TOKEN": "from-the-environment-123"},
    )
    assert p.authenticate("from-the-environment-123") == Principal("acme", "acme")
    assert p.authenticate("ci-token-0123456789") == Principal("acme", "ci-bot")


def test_token_env_unset_or_weak_is_a_located_error() -> None:
    body = """
    version: 1
    tenants:
      acme:
        token_env: ACME_TOKEN
    """
    assert (
        "test.yaml:5:5: tenants.acme.token_env: environment variable ACME_TOKEN is not set"
        in str(config_error(body))
    )
    weak = config_error(body, {"ACME_TOKEN": "short"})
    assert "under 16 characters" in str(weak) and "short" not in str(weak).replace("under 16", "")


def test_a_token_shared_by_two_tenants_is_an_error() -> None:
    err = config_error(
        f"""
        version: 1
        tenants:
          a: {{tokens: ["{digest("same-token-0123456789")}"]}}
          b: {{tokens: ["{digest("same-token-0123456789")}"]}}
        """
    )
    assert "test.yaml:5:" in str(err) and "already used by tenant 'a'" in str(err)


def test_anonymous_tenant_admits_missing_token_but_not_unknown_one() -> None:
    p = policy(
        """
        version: 1
        anonymous: lab
        tenants:
          lab: {}
        """
    )
    assert p.authenticate(None) == Principal("lab", "anonymous")
    with pytest.raises(Unauthenticated):
        p.authenticate("typo-token")


def test_permissive_allows_everything_for_the_default_tenant() -> None:
    p = Policy.permissive()
    who = p.authenticate("whatever")
    assert who == p.authenticate(None) == Principal("default", "anonymous")
    for action in ACTIONS:
        decision = p.authorize(who, action=action, bridge="custom", command="custom:run")
        assert decision == engine.Decision(True, "permissive")
    assert p.quotas_for("default") == Quotas()
    assert p.deadline_s("default", "mock", None) == 600.0
    assert p.deadline_s("default", "mock", 2.5) == 2.5
    assert p.network_for("default", "dspy") == NetworkPolicy()
    assert p.is_permissive


# --- authorization --------------------------------------------------------------


def test_allow_rule_is_reported() -> None:
    p = policy(RULES)
    assert p.check(ACME, action="call", bridge="mock", command="mock:echo") == engine.Decision(
        True, "mock-all"
    )
    assert (
        p.authorize(ACME, action="call", bridge="dspy", command="dspy:predict").rule
        == "dspy-commands"
    )


def test_deny_wins_over_allow_whatever_the_order() -> None:
    p = policy(RULES)
    decision = p.authorize(ACME, action="call", bridge="dspy", command="dspy:compile")
    assert decision == engine.Decision(False, "no-dspy-compile")
    # no-custom is listed after mock-all, which also matches: deny still wins.
    assert p.authorize(ACME, action="call", bridge="mock", command="custom:run") == engine.Decision(
        False, "no-custom"
    )


def test_denials_are_case_insensitive() -> None:
    p = policy(RULES)
    assert p.authorize(ACME, action="call", bridge="MOCK", command="CUSTOM:Run").rule == "no-custom"


def test_cross_bridge_requests_are_denied() -> None:
    p = policy(RULES)
    assert (
        p.authorize(ACME, action="call", bridge="dspy", command="mock:echo").rule == "default-deny"
    )
    assert p.authorize(
        ACME, action="call", bridge="langchain", command="langchain:run"
    ) == engine.Decision(False, "bridge-not-allowed")


def test_conditions_on_absent_fields_do_not_match() -> None:
    p = policy(RULES)
    assert (
        p.authorize(ACME, action="create_resource", bridge="dspy", resource_type="model").rule
        == "models-only"
    )
    assert p.authorize(
        ACME, action="create_resource", bridge="dspy", resource_type="program"
    ).rule == ("default-deny")
    assert p.authorize(ACME, action="list_bridges") == engine.Decision(False, "default-deny")


@pytest.mark.parametrize("command", [None, "", "nocolon", "a:b:c", "dspy:predict\n", "dspy: x"])
def test_malformed_commands_are_denied(command: str | None) -> None:
    assert (
        policy(RULES).authorize(ACME, action="call", bridge="mock", command=command).rule
        == "invalid-command"
    )


def test_check_raises_permission_denied_naming_the_rule() -> None:
    with pytest.raises(PermissionDenied) as info:
        policy(RULES).check(ACME, action="call", bridge="dspy", command="dspy:compile")
    assert info.value.details == {"rule": "no-dspy-compile"}
    assert "no-dspy-compile" in info.value.message


def test_unknown_action_or_tenant_is_a_programming_error() -> None:
    p = policy(RULES)
    with pytest.raises(InternalError):
        p.authorize(ACME, action="explode", bridge="mock")
    with pytest.raises(InternalError):
        p.authorize(Principal("ghost", "ghost"), action="call", bridge="mock", command="mock:x")


def test_visible_bridges_filters_listing() -> None:
    assert policy(RULES).visible_bridges("acme", ["mock", "dspy", "custom"]) == ["mock", "dspy"]


# --- limits, quotas, network, secrets -------------------------------------------

LIMITS = """
version: 1
defaults:
  quotas: {max_concurrent_calls: 3, max_workers: 1}
  limits: {call_timeout_s: 10, memory: 256m}
  network: {"*": none, dspy: {allowlist: ["llm.internal:443"]}}
  secrets:
    dspy: {SHARED: shared-fake-value}
tenants:
  acme:
    quotas: {max_workers: 5, max_resources: null}
    limits:
      pids: 64
      bridges:
        dspy: {call_timeout_s: 120, cpus: 2, memory: 1g}
    network: {langchain: {allowlist: ["api.example.com:443"]}}
    secrets:
      dspy:
        API_KEY: {env: ACME_API_KEY}
        FROM_FILE: {file: /run/secrets/acme-key}
        UNDECLARED: fake-undeclared
  plain: {}
"""


def test_quotas_inherit_key_by_key_and_null_is_unlimited() -> None:
    p = policy(LIMITS)
    assert p.quotas_for("acme") == Quotas(
        3, engine.BUILTIN_QUOTAS.max_calls_per_minute, None, 5, 4 << 20
    )
    assert p.quotas_for("plain").max_workers == 1


def test_deadline_is_the_shorter_of_policy_and_client() -> None:
    p = policy(LIMITS)
    assert p.deadline_s("acme", "mock", None) == 10.0
    assert p.deadline_s("acme", "mock", 0) == 10.0
    assert p.deadline_s("acme", "mock", 3.0) == 3.0
    assert p.deadline_s("acme", "mock", 30.0) == 10.0
    assert p.deadline_s("acme", "dspy", 60.0) == 60.0
    assert p.deadline_s("acme", "dspy", None) == 120.0
    with pytest.raises(InvalidArgument):
        p.deadline_s("acme", "mock", -1.0)


def test_container_limits_per_bridge() -> None:
    p = policy(LIMITS)
    assert p.limits_for("acme", "dspy") == WorkerLimits(cpus=2.0, memory_bytes=1 << 30, pids=64)
    assert p.limits_for("acme", "mock") == WorkerLimits(memory_bytes=256 << 20, pids=64)
    assert p.limits_for("plain", "dspy") == WorkerLimits(memory_bytes=256 << 20)


def test_network_precedence() -> None:
    p = policy(LIMITS)
    assert p.network_for("acme", "langchain") == NetworkPolicy(
        "allowlist", ("api.example.com:443",)
    )
    assert p.network_for("acme", "dspy") == NetworkPolicy("allowlist", ("llm.internal:443",))
    assert p.network_for("acme", "mock") == NetworkPolicy("none", ())


def test_secrets_only_what_the_bridge_declares(tmp_path: Path) -> None:
    secret_file = tmp_path / "key"
    secret_file.write_text("file-fake-secret\n")
    p = policy(
        LIMITS.replace("/run/secrets/acme-key", str(secret_file)),
        environ={"ACME_API_KEY": "env-fake-secret"},
    )
    got = p.secrets_for("acme", "dspy", ["API_KEY", "FROM_FILE", "SHARED", "NOT_CONFIGURED"])
    assert got == {
        "API_KEY": "env-fake-secret",
        "FROM_FILE": "file-fake-secret",
        "SHARED": "shared-fake-value",
    }
    assert p.secrets_for("acme", "mock", ["API_KEY"]) == {}
    assert p.secrets_for("plain", "dspy", ["API_KEY", "SHARED"]) == {"SHARED": "shared-fake-value"}
    assert "fake-undeclared" not in repr(p.document) and "shared-fake-value" not in repr(p.document)


def test_missing_secret_source_names_the_variable_not_a_value() -> None:
    p = policy(LIMITS.replace("/run/secrets/acme-key", "/nonexistent/key"))
    with pytest.raises(ConfigError, match="ACME_API_KEY is not set"):
        p.secrets_for("acme", "dspy", ["API_KEY"])
    problems = p.check_secrets()
    assert any("ACME_API_KEY" in x for x in problems) and any(
        "/nonexistent/key" in x for x in problems
    )


# --- load errors ----------------------------------------------------------------


def test_misspelt_key_names_the_key_its_location_and_a_suggestion() -> None:
    err = config_error(
        """
        version: 1
        tenants:
          acme:
            quotas:
              max_conccurent_calls: 3
        """
    )
    assert "test.yaml:6:7: tenants.acme.quotas: unknown key 'max_conccurent_calls'" in str(err)
    assert "did you mean 'max_concurrent_calls'" in str(err)
    assert err.details["errors"][0]["line"] == 6


def test_every_error_is_reported_in_line_order() -> None:
    err = config_error(
        """
        version: 1
        tenants:
          acme:
            bridges: "everything"
            rules:
              - name: r
                effect: alow
              - effect: allow
            network: {dspy: open}
            limits: {memory: lots}
        """
    )
    lines = [e["line"] for e in err.details["errors"]]
    assert len(lines) == 5 and lines == sorted(lines)
    text = str(err)
    for needle in (
        "'allow' or 'deny'",
        "missing required key 'name'",
        "unrestricted egress",
        "512m",
    ):
        assert needle in text


def test_plain_token_in_tokens_is_refused_without_echoing_it() -> None:
    err = config_error(
        """
        version: 1
        tenants:
          acme: {tokens: ["my-real-secret-token"]}
        """
    )
    assert "sha256:<64 lowercase hex digits>" in str(err)
    assert "my-real-secret-token" not in str(err) and "my-real-secret-token" not in repr(
        err.details
    )
    assert err.__cause__ is None and err.__suppress_context__


def test_duplicate_keys_are_errors() -> None:
    err = config_error(
        f"""
        version: 1
        tenants:
          acme:
            tokens: ["{digest("a-token-0123456789")}"]
            tokens: []
        """
    )
    assert "test.yaml:6:5: tenants.acme: duplicate key 'tokens'" in str(err)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("", "the file is empty"),
        ("tenants: {}", "missing required key 'version'"),
        ("version: 2", "Input should be 1"),
        ("version: 1\ntenants: [\n", "YAML syntax error"),
        ("version: 1\nanonymous: ghost", "tenant 'ghost' is not defined"),
        (
            "version: 1\ntenants:\n  a:\n    rules:\n      - {name: r, effect: allow, actions: [stats], commands: ['x:y']}",
            "'commands' only matches action 'call'",
        ),
        ("version: 1\ntenants:\n  a:\n    principals: {anonymous: {}}", "is reserved"),
        (
            "version: 1\ntenants:\n  a:\n    secrets: {dspy: {K: {env: A, file: /b}}}",
            "exactly one of",
        ),
        ("version: 1\ntenants:\n  a:\n    secrets: {dspy: {K: 12}}", "quote the value"),
        ("version: 1\ntenants:\n  a:\n    network: {dspy: {allowlist: []}}", "empty allowlist"),
        (
            "version: 1\ntenants:\n  a:\n    network: {dspy: {allowlist: ['h:70000']}}",
            "outside 1-65535",
        ),
        ("version: 1\ntenants:\n  Big: {}", "invalid name"),
        (
            "version: 1\ntenants:\n  a:\n    rules: [{name: r, effect: allow}, {name: r, effect: deny}]",
            "repeated: r",
        ),
    ],
)
def test_load_errors(body: str, needle: str) -> None:
    assert needle in str(config_error(body))


def test_world_writable_or_missing_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\n")
    assert load_policy(path).tenants == ()
    os.chmod(path, 0o666)
    with pytest.raises(ConfigError, match="writable by every user"):
        load_policy(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_policy(tmp_path / "missing.yaml")


# --- CLI ------------------------------------------------------------------------


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mlbridge")
    policy_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


def test_cli_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["policy", "check", str(EXAMPLE)]) == 0
    assert capsys.readouterr().out == "ok\n"
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ntenants:\n  a:\n    bridgez: [mock]\n")
    assert run_cli(["policy", "check", str(bad)]) == 1
    assert (
        f"{bad}:4:5: tenants.a: unknown key 'bridgez' (did you mean 'bridges'?)"
        in capsys.readouterr().err
    )


def test_cli_check_resolve_secrets(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ALICE_OPENAI_API_KEY", raising=False)
    assert run_cli(["policy", "check", "--resolve-secrets", str(EXAMPLE)]) == 1
    assert "ALICE_OPENAI_API_KEY is not set" in capsys.readouterr().err
    monkeypatch.setenv("ALICE_OPENAI_API_KEY", "fake-key-for-test")
    assert run_cli(["policy", "check", "--resolve-secrets", str(EXAMPLE)]) == 0


def test_cli_hash_token_reads_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("alice-example-token\n"))
    assert run_cli(["policy", "hash-token"]) == 0
    assert capsys.readouterr().out.strip() == digest("alice-example-token")
    assert digest("alice-example-token") in EXAMPLE.read_text()
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert run_cli(["policy", "hash-token"]) == 2
