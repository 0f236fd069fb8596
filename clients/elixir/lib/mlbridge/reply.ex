defmodule MLBridge.Reply do
  @moduledoc """
  A call's whole reply, returned with the `detailed: true` option:
  `result`, the reply's `attachments` (name => bytes), its `metadata`
  (string => string, e.g. `"mlbridge-deprecated"`) and the gRPC `call_id`
  it ran under.
  """

  defstruct [:result, :call_id, attachments: %{}, metadata: %{}]

  @type t :: %__MODULE__{
          result: term(),
          call_id: String.t() | nil,
          attachments: %{optional(String.t()) => binary()},
          metadata: %{optional(String.t()) => String.t()}
        }
end
