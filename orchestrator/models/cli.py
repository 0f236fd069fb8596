"""``mlbridge models ...``: add, list, verify and remove models in the model store; make a tiny one."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from runtimes.wire.errors import MLBridgeError

from .store import OPERATOR, ModelStore

__all__ = ["register"]


def _store(args: argparse.Namespace) -> ModelStore:
    if args.store:
        return ModelStore(args.store)
    from ..config import load_config

    return ModelStore(load_config(args.config, state_dir=args.state_dir).model_store_path)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``models add|list|verify|rm|tiny`` to the top-level CLI."""
    models = subparsers.add_parser("models", help="the model store: add, list, verify, remove models",
                                   description="Models are artifacts on the host, named by content (sha256 of "
                                               "every file); workers get them read-only.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", help="the model store directory (default: the config's model_store, "
                                        "else <state_dir>/models)")
    common.add_argument("--config", help="orchestrator YAML config to read model_store/state_dir from")
    common.add_argument("--state-dir", help="state directory (default from the config)")
    commands = models.add_subparsers(dest="models_command", metavar="COMMAND", required=True)
    add = commands.add_parser("add", parents=[common], help="import a saved model/tokenizer directory",
                              description="Copy DIR (save_pretrained output) into the store as NAME.")
    add.add_argument("dir", metavar="DIR")
    add.add_argument("--name", required=True)
    add.add_argument("--replace", action="store_true", help="point an existing NAME at the new content")
    add.set_defaults(func=_add)
    ls = commands.add_parser("list", parents=[common], help="the store's models")
    ls.add_argument("--tenant", help="a tenant's exported models instead of the operator's ('*': everyone's)")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_list)
    verify = commands.add_parser("verify", parents=[common], help="re-hash models against their records")
    verify.add_argument("names", nargs="*", metavar="NAME", help="default: every operator model")
    verify.set_defaults(func=_verify)
    rm = commands.add_parser("rm", parents=[common], help="remove a model (its files go with its last name)")
    rm.add_argument("name", metavar="NAME")
    rm.add_argument("--tenant", help="remove a tenant's exported model")
    rm.set_defaults(func=_rm)
    tiny = commands.add_parser("tiny", help="write a tiny random model with a locally trained tokenizer "
                                            "(for trying things out; needs torch and transformers)")
    tiny.add_argument("kind", choices=["bert-classifier", "bert-tagger", "bert-mlm", "gpt2"])
    tiny.add_argument("dir", metavar="DIR")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=_tiny)


def _fail(err: MLBridgeError) -> int:
    print(f"error: {err.flat()}", file=sys.stderr)
    return 1


def _add(args: argparse.Namespace) -> int:
    try:
        rec = _store(args).add(args.dir, args.name, replace=args.replace)
    except MLBridgeError as err:
        return _fail(err)
    print(f"added {rec.name} sha256:{rec.hash} ({len(rec.files)} files, {rec.size_bytes} bytes)")
    return 0


def _list(args: argparse.Namespace) -> int:
    owner = None if args.tenant == "*" else (args.tenant or OPERATOR)
    records = _store(args).list(owner)
    if args.json:
        print(json.dumps([r.summary() for r in records], indent=2))
        return 0
    if not records:
        print("no models")
    for r in records:
        who = "" if r.owner == OPERATOR else f"  (tenant {r.owner})"
        print(f"{r.name:<32} sha256:{r.hash[:16]}  {r.size_bytes / 1e6:9.2f} MB  {len(r.files):3d} files{who}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        names = args.names or [r.name for r in store.list()]
        bad = 0
        for name in names:
            problems = store.verify(name)
            print(f"{name}: {'ok' if not problems else 'DAMAGED: ' + ', '.join(problems)}")
            bad += bool(problems)
    except MLBridgeError as err:
        return _fail(err)
    return 1 if bad else 0


def _rm(args: argparse.Namespace) -> int:
    try:
        rec = _store(args).remove(args.name, owner=args.tenant or OPERATOR)
    except MLBridgeError as err:
        return _fail(err)
    print(f"removed {rec.name} (sha256:{rec.hash[:16]})")
    return 0


def _tiny(args: argparse.Namespace) -> int:
    from .tiny import make_tiny_model

    out = make_tiny_model(Path(args.dir), args.kind, seed=args.seed)
    print(f"wrote a tiny {args.kind} model to {out}")
    return 0
