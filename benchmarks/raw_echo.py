"""The baseline: a raw single-hop gRPC echo server (``python -m benchmarks.raw_echo PORT``)."""

from __future__ import annotations

import asyncio
import sys

import grpc

from runtimes.wire.proto import runtime_pb2 as pb
from runtimes.wire.proto import runtime_pb2_grpc as pb_grpc


class Echo(pb_grpc.RuntimeServicer):
    async def Call(self, request: pb.CallRequest, context: grpc.aio.ServicerContext) -> pb.CallReply:
        return pb.CallReply(call_id=request.call_id, ok=True, result_json=request.args_json)


async def main(port: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_RuntimeServicer_to_server(Echo(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
