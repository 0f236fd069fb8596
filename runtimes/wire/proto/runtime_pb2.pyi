from runtimes.wire.proto import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeReply(_message.Message):
    __slots__ = ("bridge", "framework", "framework_version", "commands", "resource_types", "packages", "runtime_version", "python_version", "required_secrets")
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
    REQUIRED_SECRETS_FIELD_NUMBER: _ClassVar[int]
    bridge: str
    framework: str
    framework_version: str
    commands: _containers.RepeatedCompositeFieldContainer[_common_pb2.CommandInfo]
    resource_types: _containers.RepeatedCompositeFieldContainer[_common_pb2.ResourceTypeInfo]
    packages: _containers.ScalarMap[str, str]
    runtime_version: str
    python_version: str
    required_secrets: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, bridge: _Optional[str] = ..., framework: _Optional[str] = ..., framework_version: _Optional[str] = ..., commands: _Optional[_Iterable[_Union[_common_pb2.CommandInfo, _Mapping]]] = ..., resource_types: _Optional[_Iterable[_Union[_common_pb2.ResourceTypeInfo, _Mapping]]] = ..., packages: _Optional[_Mapping[str, str]] = ..., runtime_version: _Optional[str] = ..., python_version: _Optional[str] = ..., required_secrets: _Optional[_Iterable[str]] = ...) -> None: ...

class CallRequest(_message.Message):
    __slots__ = ("call_id", "command", "args_json", "attachments", "resource_id", "resource_type", "deadline_unix_ms", "tenant", "resource_state_json", "traceparent")
    class AttachmentsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENTS_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_STATE_JSON_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    command: str
    args_json: str
    attachments: _containers.ScalarMap[str, bytes]
    resource_id: str
    resource_type: str
    deadline_unix_ms: int
    tenant: str
    resource_state_json: str
    traceparent: str
    def __init__(self, call_id: _Optional[str] = ..., command: _Optional[str] = ..., args_json: _Optional[str] = ..., attachments: _Optional[_Mapping[str, bytes]] = ..., resource_id: _Optional[str] = ..., resource_type: _Optional[str] = ..., deadline_unix_ms: _Optional[int] = ..., tenant: _Optional[str] = ..., resource_state_json: _Optional[str] = ..., traceparent: _Optional[str] = ...) -> None: ...

class CallBatch(_message.Message):
    __slots__ = ("calls",)
    CALLS_FIELD_NUMBER: _ClassVar[int]
    calls: _containers.RepeatedCompositeFieldContainer[CallRequest]
    def __init__(self, calls: _Optional[_Iterable[_Union[CallRequest, _Mapping]]] = ...) -> None: ...

class ReplyBatch(_message.Message):
    __slots__ = ("replies",)
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    replies: _containers.RepeatedCompositeFieldContainer[CallReply]
    def __init__(self, replies: _Optional[_Iterable[_Union[CallReply, _Mapping]]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "details_json")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    details_json: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., details_json: _Optional[str] = ...) -> None: ...

class CallReply(_message.Message):
    __slots__ = ("call_id", "ok", "result_json", "attachments", "error", "metadata")
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
    OK_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    ok: bool
    result_json: str
    attachments: _containers.ScalarMap[str, bytes]
    error: Error
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, call_id: _Optional[str] = ..., ok: _Optional[bool] = ..., result_json: _Optional[str] = ..., attachments: _Optional[_Mapping[str, bytes]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

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

class ConfigureRequest(_message.Message):
    __slots__ = ("tenant", "secrets", "env", "models", "export_dir")
    class SecretsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    EXPORT_DIR_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    secrets: _containers.ScalarMap[str, str]
    env: _containers.ScalarMap[str, str]
    models: _containers.RepeatedCompositeFieldContainer[ModelGrant]
    export_dir: str
    def __init__(self, tenant: _Optional[str] = ..., secrets: _Optional[_Mapping[str, str]] = ..., env: _Optional[_Mapping[str, str]] = ..., models: _Optional[_Iterable[_Union[ModelGrant, _Mapping]]] = ..., export_dir: _Optional[str] = ...) -> None: ...

class ModelGrant(_message.Message):
    __slots__ = ("name", "hash", "path", "files", "size_bytes")
    class FilesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    hash: str
    path: str
    files: _containers.ScalarMap[str, str]
    size_bytes: int
    def __init__(self, name: _Optional[str] = ..., hash: _Optional[str] = ..., path: _Optional[str] = ..., files: _Optional[_Mapping[str, str]] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class ConfigureReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
