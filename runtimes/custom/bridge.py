"""The ``custom`` bridge: run user Python, user resource types, scratch files.

User code runs inside the worker, in the handler's thread, in a fresh module
per ``custom:run`` call. Besides its ``inputs`` it sees these module globals:

``WORKDIR``
    Absolute path of the worker's scratch space (``MLBRIDGE_SCRATCH``), where
    ``custom:upload`` puts files and from which ``custom:download`` reads.
    The process's cwd is not changed (it is process-wide).
``progress(step, total=0, message="")``
    Reports progress and raises when the call is cancelled or past its
    deadline; also passed as ``main``'s second argument when it takes two.
``should_stop()``
    True once the call is cancelled or past its deadline.
``sleep(seconds)``
    A sleep that wakes (and raises) on cancellation.

Code that never calls these cannot be stopped cooperatively; the runtime then
reports ``handler_stopped: false`` and the orchestrator replaces the worker.
"""

from __future__ import annotations

import inspect
import json
import os
import platform
import re
import threading
import time
from collections.abc import Generator
from typing import Any

from runtimes.core import CallContext, InvalidArgument, command
from runtimes.core.usercode import (
    Progress,
    UserModule,
    accepts_progress,
    call_user,
    check_json,
    user_error,
)
from runtimes.wire.metadata import REPLAY_KEY

from . import capture
from .archive import iter_members, unpacked_limit
from .base import CustomBase
from .capture import OutputCapture
from .errors import BadUserType, TypeNameTaken, UploadLimitExceeded, UserResultTooLarge
from .resources import ModuleResource, UserResource, make_user_type
from .scratch import split_path
from .settings import HARD_MAX_OUTPUT_BYTES, CustomSettings

__all__ = ["CustomBridge"]

_TYPE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

_RUN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "code": {"type": "string", "description": "Python source defining main(inputs[, progress])"},
        "inputs": {"type": "object", "description": "passed to main unchanged (default {})"},
        "max_output_bytes": {"type": "integer", "minimum": 0, "maximum": HARD_MAX_OUTPUT_BYTES,
                             "description": "cap of captured stdout and of stderr, each"},
        "max_result_bytes": {"type": "integer", "minimum": 1,
                             "description": "cap of the JSON result (at most the worker's setting)"},
    },
    "required": ["code"],
    "additionalProperties": False,
}
_REGISTER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": _TYPE_NAME.pattern},
        "code": {"type": "string"},
        "class": {"type": "string"},
        "description": {"type": "string"},
        "config_schema": {"type": "object"},
    },
    "required": ["name", "code", "class"],
    "additionalProperties": False,
}
_UPLOAD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "archive": {"type": "string", "description": "name of a tar (.gz/.bz2/.xz) attachment to unpack"},
        "dest": {"type": "string", "description": "directory under the scratch space (default: its root)"},
        "overwrite": {"type": "boolean", "description": "replace existing files (default true)"},
    },
    "additionalProperties": False,
}
_DOWNLOAD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "paths": {"type": "array", "items": {"type": "string"}},
        "max_bytes": {"type": "integer", "minimum": 1},
    },
    "required": ["paths"],
    "additionalProperties": False,
}
_LIST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "path": {"type": "string", "description": "directory to list (default: the root)"},
        "recursive": {"type": "boolean", "description": "default true"},
        "max_entries": {"type": "integer", "minimum": 1},
    },
    "additionalProperties": False,
}


_HEALTH_CODE = "def main(inputs):\n    return inputs['x'] + 1\n"


def _int_arg(args: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = args.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidArgument(f"{key} must be an integer from {low} to {high}, got {value!r}")
    return value


def _check_config_schema(schema: dict[str, Any]) -> None:
    """The parts of a config schema the core checks must have the right shapes."""
    props = schema.get("properties", {})
    required = schema.get("required", [])
    ok = (
        schema.get("type", "object") == "object"
        and isinstance(props, dict)
        and all(isinstance(v, dict) for v in props.values())
        and isinstance(required, list)
        and all(isinstance(k, str) for k in required)
    )
    if not ok:
        raise BadUserType(
            "config_schema must be a JSON schema of an object: optional 'properties' "
            "(name -> schema object) and 'required' (list of names)"
        )


class CustomBridge(CustomBase):
    """Runs arbitrary user Python in the (sandboxed) worker."""

    name = "custom"
    framework = ""
    resource_types = (ModuleResource,)

    def __init__(self, settings: CustomSettings | None = None) -> None:
        super().__init__(settings)
        self._builtin_types = frozenset(t.type_name for t in self.resource_types)
        self._user_types: dict[str, type[UserResource]] = {}
        self._types_lock = threading.Lock()
        self._runs = 0

    def setup(self) -> None:
        self.scratch.ensure()
        capture.install()

    def framework_version(self) -> str:
        """User code's framework is Python itself."""
        return platform.python_version()

    def stats(self) -> dict[str, Any]:
        return {"runs": self._runs, "user_types": sorted(self._user_types), "scratch": self.scratch.path}

    def health(self) -> dict[str, tuple[bool, str]]:
        """User code runs (a tiny module compiled, executed and called as ``custom:run`` would), and the
        scratch space is a writable directory."""
        checks: dict[str, tuple[bool, str]] = {}
        started = time.perf_counter()
        try:
            mod = UserModule(_HEALTH_CODE, label="health-check", extra_globals={"WORKDIR": self.scratch.path})
            try:
                mod.execute()
                got = call_user(mod.function("main"), {"x": 41})
            finally:
                mod.release()
            ms = (time.perf_counter() - started) * 1000
            checks["interpreter"] = (got == 42, f"Python {platform.python_version()} ran user code "
                                                f"(main returned {str(got)[:40]}) in {ms:.2f} ms")
        except Exception as exc:  # noqa: BLE001 - a failing check, not a failed call
            checks["interpreter"] = (False, self.to_error(exc).flat())
        try:
            os.close(self.scratch.open_root())
            writable = os.access(self.scratch.path, os.W_OK | os.X_OK)
            checks["scratch"] = (writable, f"{self.scratch.path} is " + ("writable" if writable else "not writable"))
        except Exception as exc:  # noqa: BLE001
            checks["scratch"] = (False, self.to_error(exc).flat())
        return checks

    # -- run ----------------------------------------------------------------------
    @command(description="Run Python source: calls its main(inputs[, progress]); a generator main streams",
             schema=_RUN_SCHEMA)
    def run(self, ctx: CallContext, args: dict[str, Any]) -> Generator[Any, None, dict[str, Any]]:
        """Run ``args.code`` in a fresh module and call its ``main``.

        Returns ``{"result", "stdout", "stderr", "stdout_truncated",
        "stderr_truncated", "stdout_dropped_bytes", "stderr_dropped_bytes",
        "duration_ms"}``; a generator ``main`` adds ``"chunk_count"`` (and, on
        a unary call, ``"chunks"``), its ``return`` value being ``"result"``.

        Raises:
            UserSyntaxError: the code does not compile (line, offset).
            BadEntryPoint: no callable ``main``.
            UserCodeError: the code raised (user-frame traceback, output tails).
            UserResultInvalid / UserResultTooLarge: the result or a chunk.
            Cancelled / DeadlineExceeded: raised through ``progress``.
        """
        code = args["code"]
        self.check_code_size(code)
        inputs = args.get("inputs", {})
        if not isinstance(inputs, dict):
            raise InvalidArgument("inputs must be a JSON object")
        out_cap = _int_arg(args, "max_output_bytes", self.settings.max_output_bytes, 0, HARD_MAX_OUTPUT_BYTES)
        res_cap = _int_arg(args, "max_result_bytes", self.settings.max_result_bytes, 1,
                           self.settings.max_result_bytes)
        self._runs += 1
        started = time.monotonic()
        progress = Progress(ctx)
        mod = UserModule(code, label="user-code", extra_globals={
            "WORKDIR": self.scratch.path,
            "progress": progress,
            "should_stop": progress.should_stop,
            "sleep": progress.sleep,
        })
        cap = OutputCapture(out_cap)
        reply: dict[str, Any] = {}
        try:
            value = self._start(mod, cap, progress, inputs)
            if inspect.isgenerator(value):
                value = yield from self._stream_run(ctx, mod, cap, value, res_cap, reply)
            # Code that saw should_stop() and returned still ends as cancelled
            # (or past its deadline), whichever side of the race it finished on.
            ctx.check()
            size = check_json(value, res_cap, "the result of main()")
        finally:
            mod.release()
        reply.update(result=value, **self._fit_output(cap.summary(), size, ctx.max_reply_bytes),
                     duration_ms=round((time.monotonic() - started) * 1000, 3))
        return reply

    @staticmethod
    def _fit_output(summary: dict[str, Any], result_size: int, cap: int | None) -> dict[str, Any]:
        """Cut captured output further so result + output fit the reply size cap ``cap``.

        Output is best effort: too much of it is truncated (and flagged), it
        never costs the caller the result.
        """
        if cap is None:
            return summary
        budget = max(0, cap - result_size - 2048) // 2
        for name in ("stdout", "stderr"):
            text: str = summary[name]
            if len(json.dumps(text, ensure_ascii=False).encode()) <= budget:
                continue
            keep = text
            while keep and len(json.dumps(keep, ensure_ascii=False).encode()) > budget:
                keep = keep[: int(len(keep) * 0.9)]
            summary[f"{name}_dropped_bytes"] += len(text.encode()) - len(keep.encode())
            summary[name] = keep
            summary[f"{name}_truncated"] = True
        return summary

    def _start(self, mod: UserModule, cap: OutputCapture, progress: Progress, inputs: dict[str, Any]) -> Any:
        """Execute the module and call main; a generator main comes back unstarted."""
        with cap:
            mod.execute(cap)
        main = mod.function("main")
        call_args = (inputs, progress) if accepts_progress(main) else (inputs,)
        try:
            with cap:
                return call_user(main, *call_args)
        except BaseException as exc:  # noqa: BLE001 - user code may raise anything
            raise user_error(exc, mod, "main", cap) from None

    def _stream_run(self, ctx: CallContext, mod: UserModule, cap: OutputCapture, gen: Generator[Any, Any, Any],
                    limit: int, reply: dict[str, Any]) -> Generator[Any, None, Any]:
        """Drive a generator main: stream its chunks, or collect them for a unary call."""
        chunks: list[Any] = []
        count = total = 0
        try:
            while True:
                try:
                    with cap:
                        chunk = next(gen)
                except StopIteration as stop:
                    value = stop.value
                    break
                except BaseException as exc:  # noqa: BLE001
                    raise user_error(exc, mod, "main", cap) from None
                total += check_json(chunk, limit, f"chunk {count} yielded by main()")
                count += 1
                if ctx.streaming:
                    yield chunk
                    continue
                if total > limit:
                    raise UserResultTooLarge(
                        f"the chunks yielded by main() add up to more than the {limit}-byte cap",
                        details={"size": total, "limit": limit},
                    )
                chunks.append(chunk)
        finally:
            with cap:
                gen.close()
        reply["chunk_count"] = count
        if not ctx.streaming:
            reply["chunks"] = chunks
        return value

    # -- user resource types ---------------------------------------------------------
    @command(description="Define a resource type from a user class with create/execute[/delete]",
             schema=_REGISTER_SCHEMA)
    def register_type(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        """Register (or replace) the resource type ``args.name`` backed by ``args.class``.

        Re-registering a user type replaces it: resources created afterwards
        use the new code, resources created before keep the class they were
        built with until deleted. Registrations live in this worker only; a
        replacement worker gets them again because the reply asks the
        orchestrator to replay this call there (``mlbridge-replay-key``).

        Raises:
            BadUserType: bad name or config_schema, no such class, no create / execute.
            TypeNameTaken: the name is a built-in type.
            UserSyntaxError / UserCodeError: the code fails to compile or load.
        """
        name, code, cls_name = args["name"], args["code"], args["class"]
        if not _TYPE_NAME.match(name):
            raise BadUserType(f"type name {name!r} must match {_TYPE_NAME.pattern}", details={"name": name})
        if name in self._builtin_types:
            raise TypeNameTaken(f"{name!r} is a built-in resource type of the custom bridge; pick another name",
                                details={"name": name, "builtin": sorted(self._builtin_types)})
        self.check_code_size(code)
        schema = args.get("config_schema", {})
        _check_config_schema(schema)
        mod = UserModule(code, label=f"type:{name}", extra_globals={"WORKDIR": self.scratch.path})
        cap = OutputCapture(self.settings.max_output_bytes)
        try:
            with cap:
                mod.execute(cap)
            with self._types_lock:
                old = self._user_types.get(name)
                version = (old.type_version + 1) if old else 1
                cls = make_user_type(name, cls_name, mod, version=version,
                                     description=args.get("description", ""), config_schema=schema)
                self._user_types[name] = cls
                self.register_resource_type(cls)
        except BaseException:
            mod.release()
            raise
        if old is not None:  # its live resources keep their module object
            old.user_module.release()
        # The orchestrator replays this registration on any worker the tenant
        # claims later (a replacement after a crash included), keyed by type name.
        ctx.metadata[REPLAY_KEY] = f"custom:type:{name}"
        return {
            "name": name,
            "version": version,
            "replaced": old is not None,
            "streaming": inspect.isgeneratorfunction(cls.execute),
            "stdout": cap.stdout.getvalue(),
            "stderr": cap.stderr.getvalue(),
        }

    @command(description="Resource types of this worker, built-in and user-defined", inline=True,
             schema={"type": "object", "properties": {}, "additionalProperties": False})
    def list_types(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        live = self.resources.counts_by_type()
        out = []
        for name, cls in sorted(self.types.items()):
            user = name in self._user_types
            out.append({
                "name": name,
                "builtin": not user,
                "description": cls.description,
                "config_schema": cls.config_schema,
                "version": getattr(cls, "type_version", 0) if user else 0,
                "streaming": inspect.isgeneratorfunction(cls.execute),
                "resources": live.get(name, 0),
            })
        return {"types": out}

    # -- scratch files -----------------------------------------------------------------
    @command(description="Write attachments (or unpack one tar attachment) into the scratch space",
             schema=_UPLOAD_SCHEMA)
    def upload(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        """Stage every file, check every limit and path, then move them into place.

        Raises:
            UnsafePath, UnsafeArchiveMember, BadArchive, UploadLimitExceeded,
            PathConflict, ScratchFull: and then nothing was written.
        """
        s = self.settings
        dest = split_path(args.get("dest", ""), allow_root=True) if args.get("dest") else ()
        archive = args.get("archive")
        if archive is not None and archive not in ctx.attachments:
            raise InvalidArgument(f"no attachment named {archive!r}; attachments: "
                                  f"{', '.join(sorted(ctx.attachments)[:20]) or 'none'}")
        if archive is not None and len(ctx.attachments) > 1:
            raise InvalidArgument("with 'archive', send only the archive attachment")
        if not ctx.attachments:
            raise InvalidArgument("custom:upload needs at least one attachment")
        staging = self.scratch.new_staging()
        try:
            count = 0

            def counted() -> None:
                nonlocal count
                count += 1
                if count > s.max_upload_entries:
                    raise UploadLimitExceeded(
                        f"the upload has more than {s.max_upload_entries} entries",
                        details={"limit": "max_upload_entries", "max": s.max_upload_entries},
                    )

            if archive is None:
                items = [(split_path(n), n) for n in ctx.attachments]  # check every name first
                for parts, n in items:
                    counted()
                    staging.add_file((*dest, *parts), ctx.attachments[n], max_file=s.max_file_bytes,
                                     max_total=s.max_upload_bytes)
            else:
                limit = unpacked_limit(s.max_upload_bytes, s.max_upload_entries)
                for member, kind, reader in iter_members(ctx.attachments[archive], limit=limit):
                    ctx.check()
                    if kind == "dir" and not split_path(member.name, allow_root=True):
                        continue  # "./" entries name the root itself
                    counted()
                    parts = (*dest, *split_path(member.name))
                    if kind == "dir":
                        staging.add_dir(parts)
                        continue
                    if member.size > s.max_file_bytes:
                        raise UploadLimitExceeded(
                            f"{member.name[:200]!r} is {member.size} bytes, over the per-file limit of "
                            f"{s.max_file_bytes}",
                            details={"limit": "max_file_bytes", "max": s.max_file_bytes, "path": member.name[:200]},
                        )
                    assert reader is not None
                    staging.add_file(parts, reader, max_file=s.max_file_bytes, max_total=s.max_upload_bytes)
            if dest:
                staging.add_dir(dest)
            ctx.check()
            written = staging.commit(overwrite=bool(args.get("overwrite", True)))
        finally:
            staging.discard()
        return {
            "files": written,
            "dirs": sorted("/".join(d) for d in staging.dirs),
            "total_bytes": staging.total,
        }

    @command(description="Return scratch files as reply attachments (name = path)", schema=_DOWNLOAD_SCHEMA)
    def download(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        cap = _int_arg(args, "max_bytes", self.settings.max_download_bytes, 1, self.settings.max_download_bytes)
        paths = args["paths"]
        if not paths:
            raise InvalidArgument("paths must name at least one file")
        files = self.scratch.read_files(paths, cap)
        ctx.reply_attachments.update(files)
        return {"files": [{"path": k, "size": len(v)} for k, v in files.items()],
                "total_bytes": sum(len(v) for v in files.values())}

    @command(description="List the scratch space (symlinks are listed, never followed)", schema=_LIST_SCHEMA)
    def list_files(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        most = _int_arg(args, "max_entries", self.settings.max_list_entries, 1, self.settings.max_list_entries)
        return self.scratch.list(args.get("path", ""), recursive=bool(args.get("recursive", True)),
                                 max_entries=most) | {"workdir": self.scratch.path}
