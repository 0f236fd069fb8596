"""Protobuf <-> domain conversion for the public API, in one place."""

from __future__ import annotations

from typing import Any

from orchestrator.calls import Reply
from orchestrator.proto import mlbridge_pb2 as pb
from orchestrator.registry import ResourceRecord
from runtimes.wire.payload import dumps


def timeout_s(timeout_ms: int, context_remaining: float | None) -> float | None:
    """The sooner of the request's timeout field and the gRPC deadline."""
    options = [t for t in (timeout_ms / 1000.0 if timeout_ms > 0 else None, context_remaining) if t is not None]
    return min(options) if options else None


def call_reply(reply: Reply) -> pb.CallReply:
    return pb.CallReply(call_id=reply.call_id, result_json=reply.result, attachments=reply.attachments,
                        metadata=reply.metadata)


def stream_event(call_id: str, kind: str, payload: Any) -> pb.StreamEvent:
    if kind == "chunk":
        return pb.StreamEvent(call_id=call_id, chunk=pb.Chunk(data_json=payload))
    if kind == "progress":
        step, total, message = payload
        return pb.StreamEvent(call_id=call_id, progress=pb.Progress(step=step, total=total, message=message))
    if kind == "request":
        request_id, what, data = payload
        return pb.StreamEvent(call_id=call_id, request=pb.ClientRequest(request_id=request_id, kind=what,
                                                                        data_json=data))
    return pb.StreamEvent(call_id=call_id, final=call_reply(payload))


def resource(rec: ResourceRecord) -> pb.Resource:
    return pb.Resource(resource_id=rec.resource_id, bridge=rec.bridge, type=rec.type,
                       created_unix_ms=rec.created_ms, info_json=rec.info)


def bridges(items: list[dict[str, Any]], default: str) -> pb.ListBridgesReply:
    return pb.ListBridgesReply(bridges=[pb.BridgeInfo(**i) for i in items], default_bridge=default)


def describe(d: dict[str, Any]) -> pb.DescribeBridgeReply:
    return pb.DescribeBridgeReply(
        bridge=d["bridge"], framework=d["framework"], framework_version=d["framework_version"],
        commands=[pb.CommandInfo(name=c["name"], description=c["description"],
                                 args_schema_json=dumps(c["schema"]), streaming=c["streaming"],
                                 retry_safe=c.get("retry_safe", False))
                  for c in d["commands"]],
        resource_types=[pb.ResourceTypeInfo(name=t["name"], description=t["description"],
                                            config_schema_json=dumps(t["schema"]),
                                            streaming=t["streaming"], retry_safe=t.get("retry_safe", False),
                                            keeps_state=t.get("keeps_state", False))
                        for t in d["resource_types"]],
        packages=d["packages"], runtime_version=d["runtime_version"], python_version=d["python_version"],
    )


def stats(s: dict[str, Any]) -> pb.GetStatsReply:
    return pb.GetStatsReply(
        workers=[pb.WorkerStats(worker_id=w["worker_id"], bridge=w["bridge"], state=w["state"], tenant=w["tenant"],
                                calls=w["calls"], errors=w["errors"], in_flight=w["in_flight"],
                                backend=w["backend"], image_id=w["image_id"])
                 for w in s["workers"]],
        calls_total=s["calls_total"], errors_total=s["errors_total"], uptime_ms=s["uptime_ms"],
        resources=s["resources"], stats_json=dumps(s),
    )
