"""``mlbridge chaos workers|inject|run``: fault injection into a running orchestrator's workers.

Examples::

    mlbridge chaos workers                                  # what would be hit (asks the orchestrator at --address)
    mlbridge chaos inject kill --bridge mock --tenant acme  # one fault, now
    mlbridge --token $T chaos run --faults kill,oom,pause --every 3-5 --duration 60 \\
        --bridge mock --claimed --clients 32 --audit-log /var/log/mlbridge/audit.log --json
    mlbridge chaos run --backend docker --state-dir /var/lib/mlbridge --no-workload --faults kill

Exit codes: 0 done (``run``: and clean), 1 ``run`` found something (unspecific
codes, lost resources, audit gaps, a fault not recovered from), 2 refused.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from typing import Any

from .faults import FAULTS
from .runner import Chaos, ChaosPlan
from .targets import ChaosRefused, Selection
from .workload import WorkloadSpec

__all__ = ["register"]


def _every(text: str) -> tuple[float, float]:
    lo, sep, hi = text.partition("-")
    try:
        low = float(lo)
        high = float(hi) if sep else low
    except ValueError:
        raise argparse.ArgumentTypeError(f"--every {text!r}: expected SECONDS or LOW-HIGH (e.g. 3-5)") from None
    if not 0 < low <= high:
        raise argparse.ArgumentTypeError(f"--every {text!r}: expected 0 < LOW <= HIGH")
    return low, high


def _faults(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in kinds if k not in FAULTS]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(f"--faults {text!r}: choose from {', '.join(FAULTS)}")
    return kinds


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``chaos workers|inject|run`` to the top-level CLI."""
    chaos = subparsers.add_parser(
        "chaos", help="inject faults (kill, pause, oom, slow, cut) into workers while a workload runs",
        description="Fault injection into a running orchestrator's workers, which you must be able to administer: "
                    "the Docker engine's containers (docker backend) or the worker processes (process backend). "
                    "The orchestrator at --address is asked for its backend, id and workers' tenants; without "
                    "it, give --backend and --orchestrator-id, --state-dir/--scope (docker) or --socket-root.")
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--no-api", action="store_true",
                       help="do not ask the orchestrator at --address (then say --backend and which workers)")
    where.add_argument("--backend", choices=["docker", "process"], help="the orchestrator's worker backend")
    where.add_argument("--orchestrator-id", help="only this orchestrator's workers")
    where.add_argument("--state-dir", help="docker: the workers of orchestrators with this state dir (scope label)")
    where.add_argument("--scope", help="docker: the io.mlbridge.scope label value")
    where.add_argument("--socket-root", help="process: the directory holding the workers' socket directories")
    where.add_argument("--bridge", action="append", default=[], metavar="BRIDGE",
                       help="only workers of this bridge (repeatable; default all)")
    where.add_argument("--tenant", help="only workers claimed by this tenant")
    where.add_argument("--claimed", action="store_true", help="only workers a tenant claimed (no spares)")
    where.add_argument("--json", action="store_true", help="print JSON")
    commands = chaos.add_subparsers(dest="chaos_command", metavar="COMMAND", required=True)

    s = commands.add_parser("workers", parents=[where], help="list the workers a fault would hit")
    s.set_defaults(func=cmd_workers)

    s = commands.add_parser("inject", parents=[where], help="inject one fault into one worker now")
    s.add_argument("kind", choices=FAULTS)
    s.add_argument("--worker", help="this worker id (default: one chosen at random)")
    s.add_argument("--seconds", type=float, help="how long a pause, slow or cut lasts (default 2, 3, 2)")
    s.set_defaults(func=cmd_inject)

    s = commands.add_parser("run", parents=[where], help="faults at a rate for a duration, under a workload",
                            description="Inject faults at a rate for a duration while N clients drive a mixed "
                                        "workload (mock:echo, mock:stream, counter and journal resources) on "
                                        "--workload-bridge; report calls by outcome code, recovery after each "
                                        "fault, resources lost and, with --audit-log, the audit log's state.")
    s.add_argument("--faults", type=_faults, default=("kill",), help=f"comma-separated: {', '.join(FAULTS)}")
    s.add_argument("--every", type=_every, default=(3.0, 5.0), metavar="S|LOW-HIGH",
                   help="seconds between faults (default 3-5)")
    s.add_argument("--duration", type=float, default=60.0, help="seconds the run lasts (default 60)")
    s.add_argument("--pause-s", type=float, default=2.0, help="pause length (default 2)")
    s.add_argument("--slow-s", type=float, default=3.0, help="CPU throttle length (default 3)")
    s.add_argument("--cut-s", type=float, default=2.0, help="control channel cut length (default 2)")
    s.add_argument("--clients", type=int, default=8, help="workload client threads (default 8)")
    s.add_argument("--workload-token", action="append", default=[], metavar="TOKEN",
                   help="a token for the workload's clients (repeatable; default --token)")
    s.add_argument("--workload-bridge", default="mock", help="bridge the workload calls (a mock runtime)")
    s.add_argument("--call-timeout", type=float, default=10.0, help="each workload call's deadline (default 10)")
    s.add_argument("--no-workload", action="store_true", help="inject only")
    s.add_argument("--audit-log", help="the orchestrator's audit log: check its chain and a record per call")
    s.add_argument("--seed", type=int, help="repeatable schedule and choices")
    s.set_defaults(func=cmd_run)


def _chaos(args: argparse.Namespace) -> Chaos:
    tls = {"ca": args.tls_ca, "cert": args.tls_cert, "key": args.tls_key}
    return Chaos(address=None if args.no_api else args.address, token=args.token, backend=args.backend,
                 orchestrator_id=args.orchestrator_id, state_dir=args.state_dir, scope=args.scope,
                 socket_root=args.socket_root, tls=tls)


def _selection(args: argparse.Namespace) -> Selection:
    return Selection(tuple(args.bridge), args.tenant, args.claimed)


def _refused(exc: ChaosRefused) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 2


def cmd_workers(args: argparse.Namespace) -> int:
    try:
        with _chaos(args) as chaos:
            chaos.check_bridges(args.bridge)
            workers = chaos.workers(_selection(args))
    except ChaosRefused as exc:
        return _refused(exc)
    if args.json:
        print(json.dumps([w.to_dict() for w in workers], indent=2))
        return 0
    from ..cli import _table

    print(_table([[w.worker_id, w.bridge, "(spare)" if w.tenant == "" else (w.tenant or "?"), w.name]
                  for w in workers], ["WORKER", "BRIDGE", "TENANT", "NAME"]))
    return 0


def cmd_inject(args: argparse.Namespace) -> int:
    try:
        with _chaos(args) as chaos:
            plan = ChaosPlan(faults=(args.kind,), bridges=tuple(args.bridge), tenant=args.tenant,
                             claimed_only=args.claimed)
            candidates = chaos.check(plan)
            if args.worker:
                candidates = [w for w in candidates if w.worker_id == args.worker]
                if not candidates:
                    raise ChaosRefused(f"no serving worker {args.worker!r} matches")
            target = random.choice(candidates)
            rec = chaos.inject(args.kind, target, seconds=args.seconds)
    except ChaosRefused as exc:
        return _refused(exc)
    out: dict[str, Any] = rec.to_dict(rec.at)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{args.kind} {target.describe()}: {rec.result.error or rec.result.effect}")
    return 1 if rec.result.error else 0


def cmd_run(args: argparse.Namespace) -> int:
    try:
        plan = ChaosPlan(faults=args.faults, every_s=args.every, duration_s=args.duration, bridges=tuple(args.bridge),
                         tenant=args.tenant, claimed_only=args.claimed, pause_s=args.pause_s, slow_s=args.slow_s,
                         cut_s=args.cut_s, seed=args.seed)
        workload = None
        if not args.no_workload:
            workload = WorkloadSpec(clients=args.clients, tokens=tuple(args.workload_token) or (args.token,),
                                    bridge=args.workload_bridge, call_timeout_s=args.call_timeout)
        with _chaos(args) as chaos:
            log = None if args.json else (lambda line: print(line, file=sys.stderr, flush=True))
            report = chaos.run(plan, workload, audit_log=args.audit_log, log=log)
    except ChaosRefused as exc:
        return _refused(exc)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.render())
    return 0 if report.clean else 1
