defmodule MLBridge.Event do
  @moduledoc """
  One item of a stream (`MLBridge.stream/4`).

  | `kind` | fields |
  | --- | --- |
  | `:chunk` | `data`: a piece of output (a token, a tick, ...) |
  | `:progress` | `step`, `total` (0: unknown), `message` |
  | `:request` | `request_id`, `request_kind` (`"tool_call"`, ...), `data`: a question the running call puts to the client; answer it with `MLBridge.answer/2` (or let `:tools` answer a `"tool_call"`) |
  | `:result` | `data`: the final result; `attachments` (name => bytes), `metadata` |
  | `:error` | `error`: the `MLBridge.Error` the stream ended with |

  Every event has the stream's `call_id`. A stream's last event is its
  `:result` or its `:error`.
  """

  alias MLBridge.Error

  defstruct [
    :kind,
    :call_id,
    :data,
    :step,
    :total,
    :message,
    :request_id,
    :request_kind,
    :error,
    :reply_to,
    attachments: %{},
    metadata: %{}
  ]

  @type kind :: :chunk | :progress | :request | :result | :error

  @typedoc "Where a `:request` event's answer goes: the transport and the stream's request id (internal)."
  @type reply_to :: {module(), MLBridge.Transport.server(), MLBridge.Transport.request_id()} | nil

  @type t :: %__MODULE__{
          kind: kind(),
          call_id: String.t() | nil,
          data: term(),
          step: non_neg_integer() | nil,
          total: non_neg_integer() | nil,
          message: String.t() | nil,
          request_id: String.t() | nil,
          request_kind: String.t() | nil,
          error: Error.t() | nil,
          reply_to: reply_to(),
          attachments: %{optional(String.t()) => binary()},
          metadata: map()
        }

  @doc false
  @spec from_event(map(), reply_to()) :: t()
  def from_event(%{"event" => "chunk"} = h, _reply_to),
    do: %__MODULE__{kind: :chunk, call_id: h["call_id"], data: h["data"]}

  def from_event(%{"event" => "progress"} = h, _reply_to) do
    %__MODULE__{
      kind: :progress,
      call_id: h["call_id"],
      step: h["step"],
      total: h["total"],
      message: h["message"]
    }
  end

  def from_event(%{"event" => "request"} = h, reply_to) do
    %__MODULE__{
      kind: :request,
      call_id: h["call_id"],
      request_id: h["request_id"],
      request_kind: h["kind"],
      data: h["data"],
      reply_to: reply_to
    }
  end

  def from_event(h, _reply_to) do
    error = Error.new("INTERNAL", "unknown stream event #{inspect(h["event"])}", %{"frame" => h})
    %__MODULE__{kind: :error, call_id: h["call_id"], error: error}
  end

  @doc false
  @spec from_reply(map(), [{String.t(), binary()}]) :: t()
  def from_reply(%{"ok" => true} = h, attachments) do
    %__MODULE__{
      kind: :result,
      call_id: h["call_id"],
      data: h["result"],
      attachments: Map.new(attachments),
      metadata: h["metadata"] || %{}
    }
  end

  def from_reply(h, _attachments),
    do: %__MODULE__{kind: :error, call_id: h["call_id"], error: Error.from_wire(h["error"])}
end
