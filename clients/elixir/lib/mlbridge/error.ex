defmodule MLBridge.Error do
  @moduledoc """
  Every failure the library returns: `{:error, %MLBridge.Error{}}`.

  `code` is mlbridge's stable error code, as the orchestrator sends it
  (`"NOT_FOUND"`, `"INVALID_ARGUMENT"`, `"UNKNOWN_COMMAND"`,
  `"PERMISSION_DENIED"`, `"DEADLINE_EXCEEDED"`, `"CANCELLED"`,
  `"FRAMEWORK_ERROR"`, `"PAYLOAD_TOO_LARGE"`, ...; the table is in the
  orchestrator's docs/architecture.md), `message` its sentence and `details`
  its structured facts (`details["reason"]` where the bridge gives one).

  The client itself answers with:

  - `"UNAVAILABLE"`: the `mlbridge port` process is not running (it died, or
    is being restarted); the call was not answered.
  - `"DEADLINE_EXCEEDED"`: no reply within the call's `:timeout` (plus a
    grace period for the orchestrator's own deadline to answer first).
  - `"INVALID_ARGUMENT"`: arguments that cannot be sent (not JSON, bad options).
  - `"CANCELLED"`: a stream halted by its consumer before its end.
  - `"INTERNAL"`: a reply the client could not read.

  It is an exception too, so `raise error` works where a caller prefers that.
  """

  defexception code: "INTERNAL", message: "", details: %{}

  @type t :: %__MODULE__{code: String.t(), message: String.t(), details: map()}

  @doc "An error with `code`, `message` and `details`."
  @spec new(String.t(), String.t(), map()) :: t()
  def new(code, message, details \\ %{}) when is_binary(code) and is_binary(message) and is_map(details),
    do: %__MODULE__{code: code, message: message, details: details}

  @doc """
  The error of a reply's `"error"` object (`{"code", "message", "details"}`).

      iex> MLBridge.Error.from_wire(%{"code" => "NOT_FOUND", "message" => "no such thing"})
      %MLBridge.Error{code: "NOT_FOUND", message: "no such thing", details: %{}}
  """
  @spec from_wire(term()) :: t()
  def from_wire(%{"code" => code} = error) when is_binary(code) do
    message = error["message"]
    details = error["details"]

    new(code, if(is_binary(message), do: message, else: ""), if(is_map(details), do: details, else: %{}))
  end

  def from_wire(other), do: new("INTERNAL", "unreadable error in a reply: #{inspect(other)}")

  @impl true
  def message(%__MODULE__{code: code, message: message}), do: "#{code}: #{message}"
end
