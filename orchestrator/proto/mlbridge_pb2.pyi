from runtimes.wire.proto import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union
from runtimes.wire.proto.common_pb2 import Chunk as Chunk
from runtimes.wire.proto.common_pb2 import Progress as Progress
from runtimes.wire.proto.common_pb2 import ClientRequest as ClientRequest
from runtimes.wire.proto.common_pb2 import AnswerRequest as AnswerRequest
from runtimes.wire.proto.common_pb2 import AnswerReply as AnswerReply
from runtimes.wire.proto.common_pb2 import CommandInfo as CommandInfo
from runtimes.wire.proto.common_pb2 import ResourceTypeInfo as ResourceTypeInfo

DESCRIPTOR: _descriptor.FileDescriptor

class ListBridgesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BridgeInfo(_message.Message):
    __slots__ = ("name", "framework", "image", "pool_size", "workers_ready", "is_default", "backend")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FRAMEWORK_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    POOL_SIZE_FIELD_NUMBER: _ClassVar[int]
    WORKERS_READY_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    name: str
    framework: str
    image: str
    pool_size: int
    workers_ready: int
    is_default: bool
    backend: str
    def __init__(self, name: _Optional[str] = ..., framework: _Optional[str] = ..., image: _Optional[str] = ..., pool_size: _Optional[int] = ..., workers_ready: _Optional[int] = ..., is_default: _Optional[bool] = ..., backend: _Optional[str] = ...) -> None: ...

class ListBridgesReply(_message.Message):
    __slots__ = ("bridges", "default_bridge")
    BRIDGES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_BRIDGE_FIELD_NUMBER: _ClassVar[int]
    bridges: _containers.RepeatedCompositeFieldContainer[BridgeInfo]
    default_bridge: str
    def __init__(self, bridges: _Optional[_Iterable[_Union[BridgeInfo, _Mapping]]] = ..., default_bridge: _Optional[str] = ...) -> None: ...

class DescribeBridgeRequest(_message.Message):
    __slots__ = ("bridge",)
    BRIDGE_FIELD_NUMBER: _ClassVar[int]
    bridge: str
    def __init__(self, bridge: _Optional[str] = ...) -> None: ...

class DescribeBridgeReply(_message.Message):
    __slots__ = ("bridge", "framework", "framework_version", "commands", "resource_types", "packages", "runtime_version", "python_version")
    class PackagesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BRIDGE_FIELD_NUMBER: _ClassVar[int]
    FRAMEWORK_FIELD_NUMBER: _ClassVar[int]
    FRAMEWORK_VERSION_FIELD_NUMBER: _ClassVar[int]
    COMMANDS_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPES_FIELD_NUMBER: _ClassVar[int]
    PACKAGES_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_VERSION_FIELD_NUMBER: _ClassVar[int]
    PYTHON_VERSION_FIELD_NUMBER: _ClassVar[int]
    bridge: str
    framework: str
    framework_version: str
    commands: _containers.RepeatedCompositeFieldContainer[_common_pb2.CommandInfo]
    resource_types: _containers.RepeatedCompositeFieldContainer[_common_pb2.ResourceTypeInfo]
    packages: _containers.ScalarMap[str, str]
    runtime_version: str
    python_version: str
    def __init__(self, bridge: _Optional[str] = ..., framework: _Optional[str] = ..., framework_version: _Optional[str] = ..., commands: _Optional[_Iterable[_Union[_common_pb2.CommandInfo, _Mapping]]] = ..., resource_types: _Optional[_Iterable[_Union[_common_pb2.ResourceTypeInfo, _Mapping]]] = ..., packages: _Optional[_Mapping[str, str]] = ..., runtime_version: _Optional[str] = ..., python_version: _Optional[str] = ...) -> None: ...

class CreateResourceRequest(_message.Message):
    __slots__ = ("bridge", "type", "config_json", "attachments", "resource_id", "call_id", "timeout_ms")
    class AttachmentsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    BRIDGE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENTS_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    bridge: str
    type: str
    config_json: str
    attachments: _containers.ScalarMap[str, bytes]
    resource_id: str
    call_id: str
    timeout_ms: int
    def __init__(self, bridge: _Optional[str] = ..., type: _Optional[str] = ..., config_json: _Optional[str] = ..., attachments: _Optional[_Mapping[str, bytes]] = ..., resource_id: _Optional[str] = ..., call_id: _Optional[str] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class CreateResourceReply(_message.Message):
    __slots__ = ("resource_id", "info_json")
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    INFO_JSON_FIELD_NUMBER: _ClassVar[int]
    resource_id: str
    info_json: str
    def __init__(self, resource_id: _Optional[str] = ..., info_json: _Optional[str] = ...) -> None: ...

class ExecuteResourceRequest(_message.Message):
    __slots__ = ("resource_id", "inputs_json", "attachments", "call_id", "timeout_ms")
    class AttachmentsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    INPUTS_JSON_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENTS_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    resource_id: str
    inputs_json: str
    attachments: _containers.ScalarMap[str, bytes]
    call_id: str
    timeout_ms: int
    def __init__(self, resource_id: _Optional[str] = ..., inputs_json: _Optional[str] = ..., attachments: _Optional[_Mapping[str, bytes]] = ..., call_id: _Optional[str] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class Resource(_message.Message):
    __slots__ = ("resource_id", "bridge", "type", "created_unix_ms", "info_json")
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    BRIDGE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    INFO_JSON_FIELD_NUMBER: _ClassVar[int]
    resource_id: str
    bridge: str
    type: str
    created_unix_ms: int
    info_json: str
    def __init__(self, resource_id: _Optional[str] = ..., bridge: _Optional[str] = ..., type: _Optional[str] = ..., created_unix_ms: _Optional[int] = ..., info_json: _Optional[str] = ...) -> None: ...

class ListResourcesRequest(_message.Message):
    __slots__ = ("bridge", "type")
    BRIDGE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    bridge: str
    type: str
    def __init__(self, bridge: _Optional[str] = ..., type: _Optional[str] = ...) -> None: ...

class ListResourcesReply(_message.Message):
    __slots__ = ("resources",)
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    resources: _containers.RepeatedCompositeFieldContainer[Resource]
    def __init__(self, resources: _Optional[_Iterable[_Union[Resource, _Mapping]]] = ...) -> None: ...

class DeleteResourceRequest(_message.Message):
    __slots__ = ("resource_id",)
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    resource_id: str
    def __init__(self, resource_id: _Optional[str] = ...) -> None: ...

class DeleteResourceReply(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class CallRequest(_message.Message):
    __slots__ = ("bridge", "command", "args_json", "attachments", "call_id", "timeout_ms")
    class AttachmentsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    BRIDGE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENTS_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    bridge: str
    command: str
    args_json: str
    attachments: _containers.ScalarMap[str, bytes]
    call_id: str
    timeout_ms: int
    def __init__(self, bridge: _Optional[str] = ..., command: _Optional[str] = ..., args_json: _Optional[str] = ..., attachments: _Optional[_Mapping[str, bytes]] = ..., call_id: _Optional[str] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class CallReply(_message.Message):
    __slots__ = ("call_id", "result_json", "attachments", "metadata")
    class AttachmentsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENTS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    result_json: str
    attachments: _containers.ScalarMap[str, bytes]
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, call_id: _Optional[str] = ..., result_json: _Optional[str] = ..., attachments: _Optional[_Mapping[str, bytes]] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class StreamEvent(_message.Message):
    __slots__ = ("call_id", "chunk", "progress", "final", "request")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    chunk: _common_pb2.Chunk
    progress: _common_pb2.Progress
    final: CallReply
    request: _common_pb2.ClientRequest
    def __init__(self, call_id: _Optional[str] = ..., chunk: _Optional[_Union[_common_pb2.Chunk, _Mapping]] = ..., progress: _Optional[_Union[_common_pb2.Progress, _Mapping]] = ..., final: _Optional[_Union[CallReply, _Mapping]] = ..., request: _Optional[_Union[_common_pb2.ClientRequest, _Mapping]] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("call_id",)
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    def __init__(self, call_id: _Optional[str] = ...) -> None: ...

class CancelReply(_message.Message):
    __slots__ = ("found",)
    FOUND_FIELD_NUMBER: _ClassVar[int]
    found: bool
    def __init__(self, found: _Optional[bool] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ("usage_tenant", "usage_since_unix_ms")
    USAGE_TENANT_FIELD_NUMBER: _ClassVar[int]
    USAGE_SINCE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    usage_tenant: str
    usage_since_unix_ms: int
    def __init__(self, usage_tenant: _Optional[str] = ..., usage_since_unix_ms: _Optional[int] = ...) -> None: ...

class WorkerStats(_message.Message):
    __slots__ = ("worker_id", "bridge", "state", "tenant", "calls", "errors", "in_flight", "resources", "backend", "image_id")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    BRIDGE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    bridge: str
    state: str
    tenant: str
    calls: int
    errors: int
    in_flight: int
    resources: int
    backend: str
    image_id: str
    def __init__(self, worker_id: _Optional[str] = ..., bridge: _Optional[str] = ..., state: _Optional[str] = ..., tenant: _Optional[str] = ..., calls: _Optional[int] = ..., errors: _Optional[int] = ..., in_flight: _Optional[int] = ..., resources: _Optional[int] = ..., backend: _Optional[str] = ..., image_id: _Optional[str] = ...) -> None: ...

class GetStatsReply(_message.Message):
    __slots__ = ("workers", "calls_total", "errors_total", "uptime_ms", "resources", "stats_json")
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    CALLS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ERRORS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    UPTIME_MS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    STATS_JSON_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerStats]
    calls_total: int
    errors_total: int
    uptime_ms: int
    resources: int
    stats_json: str
    def __init__(self, workers: _Optional[_Iterable[_Union[WorkerStats, _Mapping]]] = ..., calls_total: _Optional[int] = ..., errors_total: _Optional[int] = ..., uptime_ms: _Optional[int] = ..., resources: _Optional[int] = ..., stats_json: _Optional[str] = ...) -> None: ...
