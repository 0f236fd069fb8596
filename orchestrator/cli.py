"""``mlbridge``: serve, call, bridges, resources, status, and the tool subcommands."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import warnings
from typing import Any

from runtimes.wire.aio import run as run_loop
from runtimes.wire.errors import MLBridgeError
from runtimes.wire.metadata import DEPRECATED

from .client import MLBridge

# Subcommand groups living in their own modules; each exposes register(subparsers).
_EXTENSIONS = ("orchestrator.images.cli", "orchestrator.policy.cli", "orchestrator.audit_cli", "orchestrator.port",
               "orchestrator.models.cli", "orchestrator.usage_cli", "orchestrator.chaos.cli")


def _client(args: argparse.Namespace) -> MLBridge:
    return MLBridge.connect(args.address, token=args.token, timeout=args.timeout, tls_ca=args.tls_ca,
                            tls_cert=args.tls_cert, tls_key=args.tls_key)


def cmd_serve(args: argparse.Namespace) -> int:
    from .config import load_config
    from .serve import run

    logging.basicConfig(level=os.environ.get("MLBRIDGE_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tls = None
    if args.serve_tls_cert or args.serve_tls_key:
        tls = {"cert": args.serve_tls_cert, "key": args.serve_tls_key, "client_ca": args.serve_tls_client_ca}
    cfg = load_config(args.config, listen=args.listen, backend=args.backend, policy=args.policy,
                      audit_log=args.audit_log, state_dir=args.state_dir, tls=tls,
                      metrics_listen=args.metrics_listen, strict_bridges=True if args.strict else None)

    def ready(server: Any) -> None:
        metrics = server.app.observability.metrics_port
        for name, reason in sorted(server.app.skipped.items()):
            print(f"mlbridge: skipping bridge {name}: {reason}", flush=True)
        print(f"mlbridge: serving {', '.join(sorted(server.app.config.bridges))} on {server.target} "
              f"(backend {cfg.backend}){f'; metrics on port {metrics}' if metrics else ''}; Ctrl-C stops",
              flush=True)

    run_loop(run(cfg, on_ready=ready))
    return 0


class UsageError(Exception):
    """Bad command-line input; exit code 2."""


def _json_object(text: str | None, flag: str) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{flag} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{flag} must be a JSON object")
    return value


def _attachments(specs: list[str] | None) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for spec in specs or ():
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = os.path.basename(spec), spec
        try:
            with open(path, "rb") as fh:
                out[name] = fh.read()
        except OSError as exc:
            raise UsageError(f"--attach {spec}: {exc.strerror}") from None
    return out


def _save(attachments: dict[str, bytes], directory: str | None) -> None:
    if not attachments:
        return
    if not directory:
        names = ", ".join(sorted(attachments))
        print(f"(reply attachments not saved: {names}; use --save-attachments DIR)", file=sys.stderr)
        return
    root = os.path.realpath(directory)
    os.makedirs(root, exist_ok=True)
    for name, data in attachments.items():
        target = os.path.realpath(os.path.join(root, name))
        if not target.startswith(root + os.sep):  # a hostile name must not escape DIR
            print(f"(skipped attachment with unsafe name {name!r})", file=sys.stderr)
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as fh:
            fh.write(data)
        print(f"saved {target} ({len(data)} bytes)", file=sys.stderr)


def _print_stream(events: Any) -> None:
    for ev in events:
        line = {"kind": ev.kind, "data": ev.data}
        if ev.kind == "progress":
            line.update(step=ev.step, total=ev.total, message=ev.message)
        print(json.dumps(line), flush=True)


def cmd_call(args: argparse.Namespace) -> int:
    payload = _json_object(args.args, "--args")
    files = _attachments(args.attach)
    with _client(args) as mb:
        if args.stream:
            _print_stream(mb.call_stream(args.bridge, args.command, payload, call_id=args.call_id))
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # said plainly below instead
                res = mb.call_detailed(args.bridge, args.command, payload, attachments=files,
                                       call_id=args.call_id)
            if DEPRECATED in res.metadata:
                print(f"deprecated: {res.metadata[DEPRECATED]}", file=sys.stderr)
            print(json.dumps(res.result, indent=2))
            _save(res.attachments, args.save_attachments)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run a Python file's main(inputs) in the custom sandbox."""
    try:
        with open(args.file, encoding="utf-8") as fh:
            code = fh.read()
    except OSError as exc:
        raise UsageError(f"{args.file}: {exc.strerror}") from None
    payload = {"code": code, "inputs": _json_object(args.inputs, "--inputs") or {}}
    with _client(args) as mb:
        if args.stream:
            _print_stream(mb.call_stream(args.bridge, "custom:run", payload, call_id=args.call_id))
            return 0
        res = mb.call(args.bridge, "custom:run", payload, call_id=args.call_id)
    sys.stderr.write(res.get("stderr", ""))
    sys.stdout.write(res.get("stdout", ""))
    print(json.dumps(res.get("result"), indent=2))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as mb:
        found = mb.cancel(args.call_id)
    print("cancelled" if found else f"no call {args.call_id!r} of yours is running")
    return 0 if found else 1


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


def _health(bridge: dict[str, Any]) -> str:
    """SERVING or NOT_SERVING, as the health service says (older servers: whether any worker is ready)."""
    serving = bridge["serving"] if "serving" in bridge else bool(bridge["ready"])
    return "SERVING" if serving else "NOT_SERVING"


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as mb:
        s = mb.stats()
    print(f"orchestrator {s['orchestrator_id']}  backend {s['backend']}  up {s['uptime_ms'] / 1000:.0f}s  "
          f"calls {s['calls_total']}  errors {s['errors_total']}  in flight {s['in_flight']}  "
          f"resources {s['resources']}")
    print()
    print(_table([[n, b["ready"], f"{b['spares']}/{b['spare_target']}", f"{b['pool_size']}-{b['max_spares']}",
                   b["held"], b["claims_per_min"], _health(b), (b.get("health") or b["last_error"])[:60]]
                  for n, b in sorted(s["bridges"].items())],
                 ["BRIDGE", "READY", "SPARES/TARGET", "MIN-MAX", "HELD", "CLAIMS/MIN", "HEALTH", "WHY / LAST ERROR"]))
    for name, reason in sorted((s.get("skipped") or {}).items()):
        print(f"skipped at start: {name}: {reason}")
    circuits = [[b, t, c["state"].upper().replace("_", "-"), c["failures"], c["retry_after_s"], c["reason"][:60]]
                for b, tenants in sorted(s.get("circuits", {}).items()) for t, c in sorted(tenants.items())]
    if circuits:
        print()
        print(_table(circuits, ["BRIDGE", "TENANT", "CIRCUIT", "FAILURES", "RETRY IN S", "LAST FAILURE"]))
    print()
    print(_table([[w["worker_id"], w["bridge"], w["state"], w["tenant"] or "(spare)", w["calls"], w["errors"],
                   w["in_flight"]] for w in s["workers"]],
                 ["WORKER", "BRIDGE", "STATE", "TENANT", "CALLS", "ERRORS", "IN FLIGHT"]))
    return 0


#: The connection options: (flags, default's environment variable, extra add_argument keywords, help).
_CLIENT_OPTIONS: tuple[tuple[str, str | None, dict[str, Any], str], ...] = (
    ("--address", "MLBRIDGE_ADDRESS", {}, "orchestrator address, host:port or unix:///path (env MLBRIDGE_ADDRESS)"),
    ("--token", "MLBRIDGE_TOKEN", {}, "bearer token (env MLBRIDGE_TOKEN)"),
    ("--timeout", None, {"type": float}, "per-call timeout in seconds"),
    ("--tls-ca", "MLBRIDGE_TLS_CA", {}, "CA bundle to verify the server (TLS)"),
    ("--tls-cert", "MLBRIDGE_TLS_CERT", {}, "client certificate (mTLS)"),
    ("--tls-key", "MLBRIDGE_TLS_KEY", {}, "client key (mTLS)"),
)
#: Subcommands that are not clients of a running orchestrator (serve's --tls-cert/--tls-key are the server's).
_NOT_CLIENTS = frozenset({"serve"})


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    """The connection options, before any command, with their defaults."""
    for flag, env, extra, text in _CLIENT_OPTIONS:
        default = "127.0.0.1:50051" if flag == "--address" else None
        parser.add_argument(flag, default=os.environ.get(env, default) if env else default, help=text, **extra)


def _accept_client_options_after(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Let every client subcommand, nested ones and those of extension modules too, take the connection options.

    Given after the command, an option overrides the same one given before it; left out, the one before it (or
    its default) stands: the copies default to ``SUPPRESS``, so they set nothing unless given. A subcommand that
    already defines one of these flags keeps its own.
    """
    for name, parser in sub.choices.items():
        if name in _NOT_CLIENTS:
            continue
        own = set(parser._option_string_actions)
        wanted = [o for o in _CLIENT_OPTIONS if o[0] not in own]
        if wanted:
            group = parser.add_argument_group("connection options (also accepted before the command)")
            for flag, _env, extra, text in wanted:
                group.add_argument(flag, default=argparse.SUPPRESS, help=text, **extra)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                _accept_client_options_after(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlbridge", description="Sandboxed orchestrator for ML frameworks.")
    _add_client_options(p)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="run the orchestrator")
    s.add_argument("--config", help="YAML config (default: the shipped default config)")
    s.add_argument("--listen", help="host:port or unix:///path (default 127.0.0.1:50051)")
    s.add_argument("--backend", help="worker backend: process, docker, or any installed in mlbridge.backends "
                   "(default from config)")
    s.add_argument("--policy", help="policy file (tenants, tokens, rules, quotas)")
    s.add_argument("--audit-log", help="append-only audit log file")
    s.add_argument("--state-dir", help="where the resource registry lives (default from config)")
    s.add_argument("--tls-cert", dest="serve_tls_cert", help="server certificate (PEM): serve over TLS")
    s.add_argument("--tls-key", dest="serve_tls_key", help="server key (PEM)")
    s.add_argument("--tls-client-ca", dest="serve_tls_client_ca", help="require client certificates from this CA (mTLS)")
    s.add_argument("--metrics-listen", metavar="HOST:PORT",
                   help="serve Prometheus metrics on HOST:PORT at /metrics (off by default)")
    s.add_argument("--strict", action="store_true",
                   help="refuse to start when a bridge's framework is missing (config strict_bridges); by "
                        "default such a bridge is skipped and the others are served")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("call", help="call a namespaced command and print its JSON result")
    s.add_argument("bridge")
    s.add_argument("command", help="namespace:operation, e.g. mock:echo")
    s.add_argument("--args", help="JSON object of arguments")
    s.add_argument("--stream", action="store_true", help="stream chunks and progress as JSON lines")
    s.add_argument("--attach", action="append", metavar="NAME=PATH", help="send a file as an attachment")
    s.add_argument("--save-attachments", metavar="DIR", help="write reply attachments into DIR")
    s.add_argument("--call-id", help="id for this call, so `mlbridge cancel ID` can stop it")
    s.set_defaults(func=cmd_call)

    s = sub.add_parser("cancel", help="cancel a running call by its id")
    s.add_argument("call_id")
    s.set_defaults(func=cmd_cancel)

    s = sub.add_parser("run", help="run a Python file's main(inputs) in the custom sandbox")
    s.add_argument("file")
    s.add_argument("--inputs", help="JSON object passed to main(inputs)")
    s.add_argument("--bridge", default="custom")
    s.add_argument("--stream", action="store_true", help="stream progress and chunks as JSON lines")
    s.add_argument("--call-id", help="id for this call, so `mlbridge cancel ID` can stop it")
    s.set_defaults(func=cmd_run)

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
    _accept_client_options_after(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except MLBridgeError as err:
        print(f"error: {err.code}: {err.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
