"""Regenerate the committed protobuf/gRPC code from the .proto files.

Usage: python scripts/gen_protos.py [--check]

With --check, generate into a temporary directory and exit 1 if any committed
file differs (the unit test tests/unit/test_protos_fresh.py runs this).
"""

from __future__ import annotations

import filecmp
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = [
    "runtimes/wire/proto/common.proto",
    "runtimes/wire/proto/runtime.proto",
    "orchestrator/proto/mlbridge.proto",
]


def generate(out_dir: Path) -> list[Path]:
    """Run protoc for every proto into out_dir; return the generated paths."""
    include = Path(protoc.__file__).parent / "_proto"
    outputs: list[Path] = []
    for proto in PROTOS:
        rc = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{ROOT}",
                f"-I{include}",
                f"--python_out={out_dir}",
                f"--pyi_out={out_dir}",
                f"--grpc_python_out={out_dir}",
                str(ROOT / proto),
            ]
        )
        if rc != 0:
            raise SystemExit(f"protoc failed on {proto}")
        stem = proto.removesuffix(".proto")
        outputs += [Path(stem + s) for s in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")]
    return outputs


def main(argv: list[str]) -> int:
    if "--check" in argv:
        with tempfile.TemporaryDirectory() as tmp:
            stale = [
                str(rel)
                for rel in generate(Path(tmp))
                if not (ROOT / rel).exists() or not filecmp.cmp(Path(tmp) / rel, ROOT / rel, shallow=False)
            ]
        if stale:
            print("stale generated code, run `make protos`: " + ", ".join(stale))
            return 1
        print("generated code is up to date")
        return 0
    for rel in generate(ROOT):
        print(f"wrote {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
