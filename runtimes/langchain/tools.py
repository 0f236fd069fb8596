"""The ``tool`` resource: code-defined ``@tool`` functions, and client tools that run in the caller.

A code-defined tool runs in the worker (:func:`runtimes.langchain.code.load_tool`).

A *client tool* has a name, a description and a JSON schema of its
arguments, and no body here: when a model calls it, the call's stream
carries a ``request`` event of kind ``tool_call`` (``{"tool", "args",
"tool_call_id"}``), the client runs its own function and answers with the
result (:meth:`CallContext.ask`). The application's data thus stays in the
application, and the sandbox needs no network to use it. Arguments that do
not fit the schema are told to the model as the tool's error
(``handle_tool_error``), so an agent can correct itself; a client tool called
outside a streaming call ends the call (``INVALID_ARGUMENT`` saying to
stream), and so does an error the client answers with (``FRAMEWORK_ERROR``
naming the client's message).
"""

from __future__ import annotations

import json
import re
from typing import Any

from runtimes.core import CallContext, InvalidArgument
from runtimes.core.jsonio import check_schema

from .base import RunnableResource
from .code import load_tool

__all__ = ["ToolResource", "client_tool"]

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DEFAULT_TIMEOUT_S = 300.0

_client_tool_cls: type | None = None


def client_tool(name: str, description: str, parameters: dict[str, Any], timeout_s: float) -> Any:
    """A LangChain tool whose body is the client's answer to a ``tool_call`` request."""
    global _client_tool_cls
    if _client_tool_cls is None:
        from langchain_core.tools import BaseTool, ToolException

        from .running import current_call

        class ClientTool(BaseTool):
            """Asks the client to run the tool; see the module docstring."""

            ask_timeout_s: float = DEFAULT_TIMEOUT_S
            handle_tool_error: Any = True

            def _to_args_and_kwargs(self, tool_input: Any, tool_call_id: str | None) -> tuple[tuple[Any, ...],
                                                                                              dict[str, Any]]:
                if not isinstance(tool_input, dict):
                    raise ToolException(f"tool {self.name} takes an object of arguments")
                return (), {"tool_args": dict(tool_input), "call_id": tool_call_id or ""}

            def _run(self, tool_args: dict[str, Any], call_id: str, run_manager: Any = None) -> Any:
                try:
                    check_schema(tool_args, self.args_schema or {}, f"arguments of tool {self.name}")
                except InvalidArgument as exc:
                    raise ToolException(exc.message) from None
                ctx = current_call()
                if not ctx.streaming:
                    raise InvalidArgument(f"tool {self.name!r} runs in the client, which only a streaming call "
                                          f"can reach: use langchain:stream or ExecuteResourceStream (the "
                                          f"Python adapter's stream() and invoke() do)")
                answer = ctx.ask("tool_call", {"tool": self.name, "args": tool_args, "tool_call_id": call_id},
                                 timeout=self.ask_timeout_s)
                return answer if isinstance(answer, str) else json.dumps(answer)

        _client_tool_cls = ClientTool
    return _client_tool_cls(name=name, description=description, args_schema=parameters, ask_timeout_s=timeout_s)


class ToolResource(RunnableResource):
    type_name = "tool"
    description = ("A tool: {code: <source with one @tool function>, name?, handle_errors?}, or a client tool "
                   "{client: true, name, description, parameters: <JSON schema>} answered by the caller")
    config_schema = {
        "type": "object",
        "properties": {
            "code": {"type": "string", "description": "Python defining one @tool function (tool is predefined)"},
            "name": {"type": "string", "description": "which tool of the code; a client tool's name"},
            "handle_errors": {"type": "boolean", "description": "code tools: errors go to the model, not the call"},
            "client": {"type": "boolean", "description": "true: the body runs in the caller"},
            "description": {"type": "string", "description": "client tools: what the model reads"},
            "parameters": {"type": "object", "description": "client tools: JSON schema of the arguments"},
            "timeout_s": {"type": "number", "description": "client tools: longest wait for the answer"},
        },
        "additionalProperties": False,
    }

    def create(self, ctx: CallContext) -> None:
        cfg = self.config
        self.module: Any = None
        name = cfg.get("name")
        if name is not None and not _NAME.match(name):
            raise InvalidArgument(f"tool name {name!r} must match {_NAME.pattern}")
        if cfg.get("client"):
            extra = sorted(set(cfg) & {"code", "handle_errors"})
            if extra or name is None:
                raise InvalidArgument("a client tool takes name, description, parameters and timeout_s"
                                      + (f", not {', '.join(extra)}" if extra else "; 'name' is missing"))
            params = cfg.get("parameters", {"type": "object", "properties": {}})
            if params.get("type", "object") != "object" or not isinstance(params.get("properties", {}), dict):
                raise InvalidArgument("client tool 'parameters' must be a JSON schema of type object")
            timeout = cfg.get("timeout_s", DEFAULT_TIMEOUT_S)
            if not isinstance(timeout, (int, float)) or timeout <= 0:
                raise InvalidArgument("client tool timeout_s must be a positive number")
            self.runnable = client_tool(name, cfg.get("description") or name, {"type": "object", **params},
                                        float(timeout))
            self.kind = "client"
            return
        extra = sorted(set(cfg) & {"description", "parameters", "timeout_s"})
        if extra or "code" not in cfg:
            raise InvalidArgument("a code tool takes code, name and handle_errors"
                                  + (f", not {', '.join(extra)}" if extra else "; 'code' is missing"))
        self.runnable, self.module = load_tool(cfg["code"], f"tool:{self.resource_id}", name,
                                               bool(cfg.get("handle_errors")))
        self.kind = "code"

    def delete(self, ctx: CallContext) -> None:
        if getattr(self, "module", None) is not None:
            self.module.release()

    def info(self) -> dict[str, Any]:
        t = getattr(self, "runnable", None)
        if t is None:
            return {}
        schema = t.args_schema if isinstance(t.args_schema, dict) else t.tool_call_schema.model_json_schema()
        return {"kind": self.kind, "name": t.name, "description": t.description,
                "parameters": sorted(schema.get("properties", {}))}
