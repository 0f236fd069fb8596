"""Image history and rollback, on the record and against a fake engine (no Docker)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import docker.errors
import pytest

from orchestrator.images import _inventory, _record, cli, recorded_image_id, verify_image
from runtimes.wire.errors import ConfigError, NotFound

TAG = "mlbridge/mock:0.1.0"
A, B, C = ("sha256:" + c * 64 for c in "abc")


class FakeEngine:
    """Just enough of docker-py's ``client.images``: tags -> ids, tag, list, remove."""

    def __init__(self) -> None:
        self.tags: dict[str, str] = {}
        self.ids: set[str] = set()
        self.images = self

    def add(self, image_id: str, *tags: str) -> None:
        self.ids.add(image_id)
        for tag in tags:
            self.tags[tag] = image_id

    def get(self, ref: str) -> Any:
        image_id = self.tags.get(ref, ref if ref in self.ids else None)
        if image_id is None:
            raise docker.errors.ImageNotFound(f"no such image: {ref}")

        def tag(repository: str, name: str) -> bool:
            self.tags[f"{repository}:{name}"] = image_id
            return True

        labels = {"io.mlbridge.bridge": "mock", "io.mlbridge.recipe-sha256": f"recipe-{image_id[7]}"}
        return SimpleNamespace(id=image_id, labels=labels, tag=tag,
                               tags=[t for t, i in self.tags.items() if i == image_id])

    def list(self, name: str = "") -> list[Any]:
        ids = {i for t, i in self.tags.items() if t.startswith(f"{name}:")}
        return [self.get(i) for i in sorted(ids)]

    def remove(self, tag: str, noprune: bool = False) -> None:
        image_id = self.tags.pop(tag)
        if image_id not in self.tags.values():
            self.ids.discard(image_id)


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLBRIDGE_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def _build(engine: FakeEngine, image_id: str) -> None:
    """What a build does: the tag moves to the new id, which is recorded."""
    engine.add(image_id, TAG)
    _record.record_image(TAG, image_id, labels=engine.get(image_id).labels, client=engine)  # type: ignore[arg-type]


def test_each_new_id_is_remembered_newest_first(state: Path) -> None:
    engine = FakeEngine()
    _build(engine, A)
    _build(engine, A)  # a reused image: no new entry
    _build(engine, B)
    history = _record.image_history("mock")
    assert [(h.image_id, h.action, h.current, h.recipe_sha256) for h in history] == [
        (B, "build", True, "recipe-b"), (A, "build", False, "recipe-a")]
    assert recorded_image_id("mock") == B
    # The id the tag left is kept alive under a tag of its own, and the current one too.
    assert engine.tags[_record.keep_tag(TAG, A)] == A
    assert engine.tags[_record.keep_tag(TAG, B)] == B
    assert _record.keep_tag(TAG, A) == "mlbridge/mock:0.1.0-" + "a" * 12
    assert _record.is_keep_tag(_record.keep_tag(TAG, A)) and not _record.is_keep_tag(TAG)


def test_history_is_bounded_and_drops_keep_tags_it_no_longer_needs(state: Path) -> None:
    engine = FakeEngine()
    ids = [f"sha256:{i:012x}{0:052x}" for i in range(_record.HISTORY_LIMIT + 2)]
    for image_id in ids:
        _build(engine, image_id)
    history = _record.image_history(TAG)
    assert [h.image_id for h in history] == ids[::-1][: _record.HISTORY_LIMIT]
    assert _record.keep_tag(TAG, ids[0]) not in engine.tags
    assert ids[0] not in engine.ids  # nothing else held it: gone from the engine
    assert _record.keep_tag(TAG, ids[2]) in engine.tags


def test_rollback_retags_records_and_verifies(state: Path) -> None:
    engine = FakeEngine()
    _build(engine, A)
    _build(engine, B)
    target = _record.rollback_image(engine, "mock")  # type: ignore[arg-type]
    assert target.image_id == A
    assert engine.tags[TAG] == A
    assert verify_image(engine, "mock") == A  # type: ignore[arg-type]
    assert [(h.image_id, h.action) for h in _record.image_history(TAG)] == [
        (A, "rollback"), (B, "build"), (A, "build")]
    # Rolling back again goes to the previous id, B; --to names any id in the history.
    assert _record.rollback_image(engine, TAG).image_id == B  # type: ignore[arg-type]
    assert _record.rollback_image(engine, TAG, to=A[7:15]).image_id == A  # type: ignore[arg-type]
    assert engine.tags[TAG] == A == recorded_image_id(TAG)


def test_rollback_refusals(state: Path) -> None:
    engine = FakeEngine()
    with pytest.raises(NotFound, match="no build of mlbridge/mock:0.1.0 on record"):
        _record.rollback_image(engine, "mock")  # type: ignore[arg-type]
    _build(engine, A)
    with pytest.raises(NotFound, match="no earlier build to roll back to"):
        _record.rollback_image(engine, "mock")  # type: ignore[arg-type]
    _build(engine, B)
    with pytest.raises(NotFound, match=f"image id {C[7:19]} is not in the history"):
        _record.rollback_image(engine, "mock", to=C[7:19])  # type: ignore[arg-type]
    with pytest.raises(NotFound, match="not in the history"):
        _record.rollback_image(engine, "mock", to="ab")  # type: ignore[arg-type]  # too short to mean anything
    for tag in [t for t, i in engine.tags.items() if i == A]:
        engine.remove(tag)
    with pytest.raises(ConfigError, match="is no longer in the Docker engine"):
        _record.rollback_image(engine, "mock")  # type: ignore[arg-type]
    assert engine.tags[TAG] == B == recorded_image_id(TAG)  # nothing changed


def test_ambiguous_prefix_is_refused() -> None:
    history = [_record.HistoryEntry("sha256:abcd1111", "t2", "build", current=True),
               _record.HistoryEntry("sha256:abcd2222", "t1", "build")]
    with pytest.raises(NotFound, match="ambiguous"):
        _record.rollback_target(history, "abcd", TAG)
    assert _record.rollback_target(history, "sha256:abcd2", TAG).recorded_at == "t1"


def test_a_record_from_before_histories_has_its_one_id(state: Path) -> None:
    state.mkdir(parents=True)
    _record.records_path().write_text(json.dumps({"schema": 1, "images": {TAG: {
        "image_id": A, "bridge": "mock", "lock_sha256": "l", "recorded_at": "2026-01-01T00:00:00Z"}}}))
    assert [(h.image_id, h.recorded_at, h.current) for h in _record.image_history(TAG)] == [
        (A, "2026-01-01T00:00:00Z", True)]
    engine = FakeEngine()
    engine.add(A, TAG)
    _build(engine, B)
    assert [h.image_id for h in _record.image_history(TAG)] == [B, A]
    assert _record.rollback_image(engine, TAG).image_id == A  # type: ignore[arg-type]


def test_inventory_leaves_keep_tags_out(state: Path) -> None:
    engine = FakeEngine()
    _build(engine, A)
    _build(engine, B)
    rows = _inventory.list_images(engine)  # type: ignore[arg-type]
    assert [r.tag for r in rows] == [TAG]


def test_history_and_rollback_commands(state: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    engine = FakeEngine()
    _build(engine, A)
    _build(engine, B)
    monkeypatch.setattr(cli, "docker_client", lambda: engine)
    assert cli.cmd_history(argparse.Namespace(bridge="mock")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["IMAGE", "ID", "RECORDED", "ACTION", "RECIPE", "LOCK", "IN", "ENGINE", "AS"]
    assert lines[1].startswith("*  " + "b" * 12) and lines[1].endswith(TAG)
    assert lines[2].startswith("   " + "a" * 12) and lines[2].endswith(_record.keep_tag(TAG, A))

    assert cli.cmd_rollback(argparse.Namespace(bridge="mock", to=None)) == 0
    assert capsys.readouterr().out.startswith(f"{TAG} now {A[:19]}")
    assert cli.cmd_rollback(argparse.Namespace(bridge="mock", to="feed")) == 1
    assert "not in the history of mlbridge/mock:0.1.0" in capsys.readouterr().err
    assert cli.cmd_history(argparse.Namespace(bridge="custom")) == 1
    assert "no build of mlbridge/custom:0.1.0 on record" in capsys.readouterr().err


def test_register_adds_history_and_rollback() -> None:
    parser = argparse.ArgumentParser(prog="mlbridge")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["images", "rollback", "mock", "--to", "abc123"])
    assert (args.func, args.bridge, args.to) == (cli.cmd_rollback, "mock", "abc123")
    args = parser.parse_args(["images", "history", "dspy"])
    assert (args.func, args.bridge) == (cli.cmd_history, "dspy")
