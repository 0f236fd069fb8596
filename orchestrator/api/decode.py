"""Registering the public service with request decoding that never fails loudly.

gRPC's generated registration decodes each request with ``FromString``; a
message that does not parse (a string field that is not UTF-8, truncated
bytes) then ends the call with gRPC's own error and a traceback in the log,
before any of mlbridge's code runs. Here a message that does not parse
becomes an :class:`Unparseable` value, which the servicer answers with
``INVALID_ARGUMENT`` naming the field at fault.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor, message
from google.protobuf.message import DecodeError

__all__ = ["Unparseable", "add_service"]


@dataclass(frozen=True)
class Unparseable:
    """A request message that did not parse; ``reason`` says why, for the client."""

    reason: str


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _bad_string_field(desc: Any, data: bytes) -> str | None:
    """The name of a top-level string field of ``desc`` whose bytes in ``data`` are not UTF-8, if any."""
    strings: dict[int, str] = {f.number: f.name for f in desc.fields
                               if f.type == descriptor.FieldDescriptor.TYPE_STRING}
    pos = 0
    try:
        while pos < len(data):
            key, pos = _varint(data, pos)
            number, wire = key >> 3, key & 7
            if wire == 0:
                _, pos = _varint(data, pos)
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            elif wire == 2:
                size, pos = _varint(data, pos)
                chunk, pos = data[pos:pos + size], pos + size
                if number in strings:
                    try:
                        chunk.decode("utf-8")
                    except UnicodeDecodeError:
                        return strings[number]
            else:
                return None
    except ValueError:
        return None
    return None


def _decoder(cls: type[message.Message]) -> Callable[[bytes], Any]:
    name = cls.DESCRIPTOR.full_name

    def decode(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except DecodeError:
            field = _bad_string_field(cls.DESCRIPTOR, data)
            if field is None:
                return Unparseable(f"the request is not a valid {name} message")
            if field.endswith("_json"):
                return Unparseable(f"{field} is not valid JSON: it is not UTF-8 text")
            return Unparseable(f"{field} of {name} is not UTF-8 text")

    return decode


def add_service(servicer: Any, server: grpc.aio.Server, service: descriptor.ServiceDescriptor,
                module: Any) -> None:
    """Register ``servicer``'s methods for ``service``, whose messages are classes of ``module``."""
    handlers = {}
    for method in service.methods:
        request = getattr(module, method.input_type.name)
        reply = getattr(module, method.output_type.name)
        make = grpc.unary_stream_rpc_method_handler if method.server_streaming else grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(getattr(servicer, method.name), request_deserializer=_decoder(request),
                                     response_serializer=reply.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)
