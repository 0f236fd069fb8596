"""Audit log: the hash chain, tamper detection, scrubbing, reopening, the CLI."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import stat
import threading
import uuid
from pathlib import Path

import pytest

from orchestrator import audit_cli
from orchestrator.audit import GENESIS_HASH, AuditLog, code_digest, is_sensitive, verify_file
from orchestrator.policy import load_policy
from runtimes.wire.errors import ConfigError, InternalError, InvalidArgument

EXAMPLE = Path(__file__).resolve().parents[2] / "policies" / "examples" / "two-tenants.yaml"
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


@pytest.fixture(autouse=True)
def _no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLBRIDGE_AUDIT_KEY", raising=False)


def write_log(path: Path, count: int = 5, **kwargs: object) -> list[dict[str, object]]:
    with AuditLog(path, **kwargs) as log:  # type: ignore[arg-type]
        return [
            log.record(
                event="call",
                tenant="alice",
                principal="alice",
                method="Call",
                command=f"mock:echo{i}",
                bridge="mock",
                outcome="ok",
                duration_ms=1.5,
            )
            for i in range(count)
        ]


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def rewrite(path: Path, new_lines: list[str]) -> None:
    path.write_text("".join(new_lines))


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    path = tmp_path / "audit" / "audit.jsonl"
    write_log(path)
    return path


# --- the chain ------------------------------------------------------------------


def test_untouched_log_verifies(log_path: Path) -> None:
    result = verify_file(log_path)
    assert (result.ok, result.records, result.first_bad, result.reason) == (True, 5, None, "")
    assert result.head == json.loads(lines(log_path)[-1])["hash"]


def test_records_carry_chain_fields(tmp_path: Path) -> None:
    records = write_log(tmp_path / "a.jsonl", 3)
    assert [r["seq"] for r in records] == [1, 2, 3]
    assert records[0]["prev_hash"] == GENESIS_HASH
    assert records[1]["prev_hash"] == records[0]["hash"]
    for record in records:
        assert uuid.UUID(str(record["event_id"])).version == 4
        assert RFC3339_UTC.match(str(record["time"]))
        body = {k: v for k, v in record.items() if k != "hash"}
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        assert record["hash"] == hashlib.sha256(canonical).hexdigest()


def test_file_and_directory_modes(log_path: Path) -> None:
    assert stat.S_IMODE(log_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(log_path.parent.stat().st_mode) == 0o700


def test_edited_field_is_caught_at_its_line(log_path: Path) -> None:
    content = lines(log_path)
    content[2] = content[2].replace('"tenant":"alice"', '"tenant":"bobby"')
    rewrite(log_path, content)
    result = verify_file(log_path)
    assert (result.ok, result.first_bad, result.records) == (False, 3, 2)
    assert "edited" in result.reason


def test_edit_with_recomputed_hash_breaks_the_next_link(log_path: Path) -> None:
    content = lines(log_path)
    record = json.loads(content[2])
    record["outcome"] = "error"
    body = {k: v for k, v in record.items() if k != "hash"}
    record["hash"] = hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    content[2] = json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"
    rewrite(log_path, content)
    result = verify_file(log_path)
    assert result.first_bad == 4 and "prev_hash" in result.reason


def test_whitespace_only_edit_is_caught(log_path: Path) -> None:
    content = lines(log_path)
    content[1] = content[1].replace(",", ", ", 1)
    rewrite(log_path, content)
    assert verify_file(log_path).first_bad == 2


def test_deleted_line_is_caught(log_path: Path) -> None:
    content = lines(log_path)
    del content[2]
    rewrite(log_path, content)
    result = verify_file(log_path)
    assert (result.ok, result.first_bad) == (False, 3)
    assert "expected seq 3, found 4" in result.reason


def test_inserted_copy_is_caught(log_path: Path) -> None:
    content = lines(log_path)
    content.insert(3, content[1])
    rewrite(log_path, content)
    assert verify_file(log_path).first_bad == 4


def test_inserted_garbage_is_caught(log_path: Path) -> None:
    content = lines(log_path)
    content.insert(1, "{not json\n")
    rewrite(log_path, content)
    result = verify_file(log_path)
    assert (result.first_bad, result.reason) == (2, "not valid JSON")


def test_reordered_lines_are_caught(log_path: Path) -> None:
    content = lines(log_path)
    content[2], content[3] = content[3], content[2]
    rewrite(log_path, content)
    result = verify_file(log_path)
    assert (result.ok, result.first_bad, result.records) == (False, 3, 2)


def test_truncated_mid_record_is_caught(log_path: Path) -> None:
    data = log_path.read_bytes()
    log_path.write_bytes(data[:-20])
    result = verify_file(log_path)
    assert (result.ok, result.first_bad) == (False, 5)
    assert "truncated" in result.reason


def test_records_cut_off_the_end_are_caught_against_a_kept_head(log_path: Path) -> None:
    head = verify_file(log_path).head
    rewrite(log_path, lines(log_path)[:3])
    assert verify_file(log_path).ok  # a shorter valid chain: only an outside anchor can tell
    result = verify_file(log_path, expect_records=5, expect_head=head)
    assert (result.ok, result.records, result.first_bad) == (False, 3, 4)
    assert "truncated" in result.reason


def test_expected_head_mismatch(log_path: Path) -> None:
    result = verify_file(log_path, expect_records=2, expect_head="0" * 64)
    assert (result.ok, result.first_bad) == (False, 2)
    with pytest.raises(InvalidArgument):
        verify_file(log_path, expect_head="0" * 64)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    assert verify_file(tmp_path / "empty.jsonl").ok
    with pytest.raises(ConfigError, match="cannot read"):
        verify_file(tmp_path / "missing.jsonl")


# --- reopening and concurrency --------------------------------------------------


def test_reopening_continues_the_chain(log_path: Path) -> None:
    with AuditLog(log_path) as log:
        record = log.record(
            event="policy_load", source="policies/default.yaml", policy_hash="ab" * 32
        )
    assert record["seq"] == 6
    assert verify_file(log_path).records == 6


def test_reopening_refuses_a_tampered_or_incomplete_tail(log_path: Path) -> None:
    original = log_path.read_bytes()
    log_path.write_bytes(original.replace(b'"outcome":"ok"', b'"outcome":"no"'))
    with pytest.raises(ConfigError, match="does not verify"):
        AuditLog(log_path)
    log_path.write_bytes(original[:-1])
    with pytest.raises(ConfigError, match="incomplete record"):
        AuditLog(log_path)
    assert log_path.read_bytes() == original[:-1]  # nothing was appended


def test_a_second_writer_is_refused(log_path: Path) -> None:
    with AuditLog(log_path), pytest.raises(ConfigError, match="in use"):
        AuditLog(log_path)


def test_closed_log_refuses_records(log_path: Path) -> None:
    log = AuditLog(log_path)
    log.close()
    with pytest.raises(InternalError, match="closed"):
        log.record(event="call")


def test_concurrent_threads_and_tasks_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "busy.jsonl"
    with AuditLog(path, sync=False) as log:
        threads = [
            threading.Thread(
                target=lambda: [log.record(event="call", tenant="t") for _ in range(25)]
            )
            for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        async def many() -> None:
            await asyncio.gather(
                *(log.arecord(event="worker_start", bridge="mock") for _ in range(20))
            )

        asyncio.run(many())
    result = verify_file(path)
    assert (result.ok, result.records) == (True, 220)


# --- HMAC -----------------------------------------------------------------------


def test_keyed_log_needs_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "keyed.jsonl"
    monkeypatch.setenv("MLBRIDGE_AUDIT_KEY", "k" * 32)
    write_log(path, 3)
    assert verify_file(path).ok
    assert not verify_file(path, key=b"x" * 32).ok
    monkeypatch.delenv("MLBRIDGE_AUDIT_KEY")
    result = verify_file(path)
    assert (result.ok, result.first_bad) == (False, 1)
    assert "MLBRIDGE_AUDIT_KEY" in result.reason
    with pytest.raises(ConfigError, match="different MLBRIDGE_AUDIT_KEY"):
        AuditLog(path)


def test_forged_plain_chain_fails_keyed_verification(tmp_path: Path) -> None:
    keyed, forged = tmp_path / "keyed.jsonl", tmp_path / "forged.jsonl"
    write_log(keyed, 2, key=b"s" * 32)
    write_log(forged, 2)  # an attacker without the key can only build a plain chain
    assert verify_file(keyed, key=b"s" * 32).ok
    assert not verify_file(forged, key=b"s" * 32).ok


def test_short_key_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLBRIDGE_AUDIT_KEY", "short")
    with pytest.raises(ConfigError, match="at least 16"):
        AuditLog(tmp_path / "a.jsonl")


# --- scrubbing ------------------------------------------------------------------


@pytest.mark.parametrize(
    "field", ["payload", "args", "inputs", "secret", "token", "api_key", "openaiApiKey"]
)
def test_sensitive_fields_are_refused(log_path: Path, field: str) -> None:
    with AuditLog(log_path) as log, pytest.raises(InvalidArgument, match="payload or secret"):
        log.record(event="call", **{field: "x"})
    assert verify_file(log_path).records == 5


def test_unknown_events_fields_and_values_are_refused(log_path: Path) -> None:
    with AuditLog(log_path) as log:
        with pytest.raises(InvalidArgument, match="unknown audit event"):
            log.record(event="party")
        with pytest.raises(InvalidArgument, match="unknown audit field"):
            log.record(event="call", tenannt="a")
        with pytest.raises(InvalidArgument, match="JSON"):
            log.record(event="call", extra={"when": object()})
    assert verify_file(log_path).records == 5


def test_secrets_never_reach_the_file(tmp_path: Path) -> None:
    policy = load_policy(EXAMPLE, environ={"ALICE_OPENAI_API_KEY": "sk-live-fake-0123456789"})
    secrets = policy.secrets_for("alice", "dspy", ["OPENAI_API_KEY", "EXAMPLE_SETTING"])
    assert secrets["OPENAI_API_KEY"] == "sk-live-fake-0123456789"
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        log.redact_values(secrets.values())
        log.record(event="policy_load", source=policy.source, policy_hash=policy.source_hash)
        log.record(
            event="worker_start",
            tenant="alice",
            bridge="dspy",
            extra={"env_names": sorted(secrets)},
        )
        record = log.record(
            event="call",
            tenant="alice",
            error_code="FRAMEWORK_ERROR",
            usage={"prompt_tokens": 12, "completion_tokens": 3},
            extra={
                "error": "provider refused key sk-live-fake-0123456789",
                "request": {
                    "api_key": "sk-live-fake-0123456789",
                    "Authorization": "Bearer xyz-abc",
                },
                "args": {"question": "private question"},
            },
        )
    text = path.read_text()
    for leaked in ("sk-live-fake-0123456789", "fake-example-value", "xyz-abc", "private question"):
        assert leaked not in text
    assert record["usage"] == {"prompt_tokens": 12, "completion_tokens": 3}
    assert record["extra"]["request"] == {"api_key": "[redacted]", "Authorization": "[redacted]"}
    assert record["extra"]["error"] == "provider refused key [redacted]"
    assert "OPENAI_API_KEY" in text  # names are fine; values are not
    assert verify_file(path).ok


@pytest.mark.parametrize(
    ("key", "sensitive"),
    [
        ("api_key", True),
        ("accessToken", True),
        ("x-api-key", True),
        ("apiKey", True),
        ("APIKEY", True),
        ("prompt_tokens", False),
        ("input_tokens", False),
        ("inputs", True),
        ("password", True),
        ("duration_ms", False),
        ("private_key_pem", True),
    ],
)
def test_is_sensitive(key: str, sensitive: bool) -> None:
    assert is_sensitive(key) is sensitive


def test_code_digest() -> None:
    assert code_digest("print('hi')") == hashlib.sha256(b"print('hi')").hexdigest()


# --- CLI ------------------------------------------------------------------------


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mlbridge")
    audit_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


def test_cli_verify(log_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["audit", "verify", str(log_path)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "ok: 5 records"
    content = lines(log_path)
    del content[1]
    rewrite(log_path, content)
    assert run_cli(["audit", "verify", str(log_path)]) == 1
    assert capsys.readouterr().out.startswith("broken at record 2 (line 2): expected seq 2")
    assert run_cli(["audit", "verify", str(log_path.with_name("nope"))]) == 2
