from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Chunk(_message.Message):
    __slots__ = ("data_json",)
    DATA_JSON_FIELD_NUMBER: _ClassVar[int]
    data_json: str
    def __init__(self, data_json: _Optional[str] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("step", "total", "message")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    step: int
    total: int
    message: str
    def __init__(self, step: _Optional[int] = ..., total: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ClientRequest(_message.Message):
    __slots__ = ("request_id", "kind", "data_json")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DATA_JSON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    kind: str
    data_json: str
    def __init__(self, request_id: _Optional[str] = ..., kind: _Optional[str] = ..., data_json: _Optional[str] = ...) -> None: ...

class AnswerRequest(_message.Message):
    __slots__ = ("call_id", "request_id", "result_json", "error")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    request_id: str
    result_json: str
    error: str
    def __init__(self, call_id: _Optional[str] = ..., request_id: _Optional[str] = ..., result_json: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class AnswerReply(_message.Message):
    __slots__ = ("found",)
    FOUND_FIELD_NUMBER: _ClassVar[int]
    found: bool
    def __init__(self, found: _Optional[bool] = ...) -> None: ...

class CommandInfo(_message.Message):
    __slots__ = ("name", "description", "args_schema_json", "streaming", "retry_safe")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ARGS_SCHEMA_JSON_FIELD_NUMBER: _ClassVar[int]
    STREAMING_FIELD_NUMBER: _ClassVar[int]
    RETRY_SAFE_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    args_schema_json: str
    streaming: bool
    retry_safe: bool
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., args_schema_json: _Optional[str] = ..., streaming: _Optional[bool] = ..., retry_safe: _Optional[bool] = ...) -> None: ...

class ResourceTypeInfo(_message.Message):
    __slots__ = ("name", "description", "config_schema_json", "streaming", "retry_safe", "keeps_state")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_SCHEMA_JSON_FIELD_NUMBER: _ClassVar[int]
    STREAMING_FIELD_NUMBER: _ClassVar[int]
    RETRY_SAFE_FIELD_NUMBER: _ClassVar[int]
    KEEPS_STATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    config_schema_json: str
    streaming: bool
    retry_safe: bool
    keeps_state: bool
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., config_schema_json: _Optional[str] = ..., streaming: _Optional[bool] = ..., retry_safe: _Optional[bool] = ..., keeps_state: _Optional[bool] = ...) -> None: ...
