"""``mlbridge``: serve, call, bridges, resources, status, and the tool subcommands."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from typing import Any

from runtimes.core.errors import MLBridgeError
from runtimes.core.loop import run as run_loop

from .client import MLBridge

# Subcommand groups living in their own modules; each exposes register(subparsers).
_EXTENSIONS = ("orchestrator.images.cli", "orchestrator.policy.cli", "orchestrator.audit_cli", "orchestrator.port")


def _client(args: argparse.Namespace) -> MLBridge:
    return MLBridge.connect(args.address, token=args.token, timeout=args.timeout)


def cmd_serve(args: argparse.Namespace) -> int:
    from .config import load_config
    from .serve import run

    logging.basicConfig(level=os.environ.get("MLBRIDGE_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, listen=args.listen, backend=args.backend, policy=args.policy,
                      audit_log=args.audit_log)

    def ready(server: Any) -> None:
        print(f"mlbridge: serving {', '.join(sorted(cfg.bridges))} on {server.target} "
              f"(backend {cfg.backend}); Ctrl-C stops", flush=True)

    run_loop(run(cfg, on_ready=ready))
    return 0


def cmd_call(args: argparse.Namespace) -> int:
    try:
        payload = json.loads(args.args) if args.args else None
    except ValueError as exc:
        print(f"error: --args is not valid JSON: {exc}", file=sys.stderr)
        return 2
    if payload is not None and not isinstance(payload, dict):
        print("error: --args must be a JSON object", file=sys.stderr)
        return 2
    with _client(args) as mb:
        if args.stream:
            for ev in mb.call_stream(args.bridge, args.command, payload):
                print(json.dumps({"kind": ev.kind, "data": ev.data, "step": ev.step, "total": ev.total,
                                  "message": ev.message} if ev.kind == "progress" else
                                 {"kind": ev.kind, "data": ev.data}), flush=True)
        else:
            print(json.dumps(mb.call(args.bridge, args.command, payload), indent=2))
    return 0


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*map(str, r)) for r in [header, *rows])


def cmd_bridges(args: argparse.Namespace) -> int:
    with _client(args) as mb:
        rows = [[b["name"] + (" *" if b["is_default"] else ""), b["framework"] or "-", b["image"],
                 f"{b['workers_ready']}/{b['pool_size']}", b["backend"]] for b in mb.list_bridges()]
    print(_table(rows, ["BRIDGE", "FRAMEWORK", "IMAGE", "READY/POOL", "BACKEND"]))
    return 0


def cmd_resources(args: argparse.Namespace) -> int:
    with _client(args) as mb:
        items = mb.list_resources(args.bridge, args.type)
    if args.json:
        print(json.dumps(items, indent=2))
    else:
        print(_table([[r["resource_id"], r["bridge"], r["type"], json.dumps(r["info"])[:60]] for r in items],
                     ["RESOURCE", "BRIDGE", "TYPE", "INFO"]))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as mb:
        s = mb.stats()
    print(f"orchestrator {s['orchestrator_id']}  backend {s['backend']}  up {s['uptime_ms'] / 1000:.0f}s  "
          f"calls {s['calls_total']}  errors {s['errors_total']}  in flight {s['in_flight']}  "
          f"resources {s['resources']}")
    print()
    print(_table([[n, f"{b['ready']}/{b['pool_size']}", "ok" if b["ready"] else "DOWN", b["last_error"][:50]]
                  for n, b in sorted(s["bridges"].items())], ["BRIDGE", "READY/POOL", "HEALTH", "LAST ERROR"]))
    print()
    print(_table([[w["worker_id"], w["bridge"], w["state"], w["tenant"] or "(spare)", w["calls"], w["errors"],
                   w["in_flight"]] for w in s["workers"]],
                 ["WORKER", "BRIDGE", "STATE", "TENANT", "CALLS", "ERRORS", "IN FLIGHT"]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlbridge", description="Sandboxed orchestrator for ML frameworks.")
    p.add_argument("--address", default=os.environ.get("MLBRIDGE_ADDRESS", "127.0.0.1:50051"),
                   help="orchestrator address, host:port or unix:///path (env MLBRIDGE_ADDRESS)")
    p.add_argument("--token", default=os.environ.get("MLBRIDGE_TOKEN"), help="bearer token (env MLBRIDGE_TOKEN)")
    p.add_argument("--timeout", type=float, default=None, help="per-call timeout in seconds")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="run the orchestrator")
    s.add_argument("--config", help="YAML config (default: the shipped default config)")
    s.add_argument("--listen", help="host:port or unix:///path (default 127.0.0.1:50051)")
    s.add_argument("--backend", choices=["process", "docker"], help="worker backend (default from config)")
    s.add_argument("--policy", help="policy file (tenants, tokens, rules, quotas)")
    s.add_argument("--audit-log", help="append-only audit log file")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("call", help="call a namespaced command and print its JSON result")
    s.add_argument("bridge")
    s.add_argument("command", help="namespace:operation, e.g. mock:echo")
    s.add_argument("--args", help="JSON object of arguments")
    s.add_argument("--stream", action="store_true", help="stream chunks and progress as JSON lines")
    s.set_defaults(func=cmd_call)

    sub.add_parser("bridges", help="list bridges").set_defaults(func=cmd_bridges)
    s = sub.add_parser("resources", help="list your resources")
    s.add_argument("--bridge")
    s.add_argument("--type")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_resources)
    sub.add_parser("status", help="bridges, workers, health and call counters").set_defaults(func=cmd_status)

    for name in _EXTENSIONS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MLBridgeError as err:
        print(f"error: {err.code}: {err.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
