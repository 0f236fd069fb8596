defmodule MLBridge.Transport do
  @moduledoc """
  How requests reach an orchestrator: the behaviour a transport implements.

  A transport carries the operations of the `mux` port protocol
  (docs/port-protocol.md): a request is a map with an `"op"` (`"call"`,
  `"create_resource"`, `"stream"`, ...) and its fields, plus attachments.
  The caller picks nothing else: `request/4` hands back an id, and the
  transport delivers what comes back to the owner process as messages:

      {:mlbridge, id, {:event, header}}               # a stream's event frame (map)
      {:mlbridge, id, {:reply, header, attachments}}  # the final frame: exactly one

  A final frame is `%{"ok" => true, "result" => ...}` or `%{"ok" => false,
  "error" => %{"code", "message", "details"}}`. When the transport cannot
  get an answer (its connection died), it delivers a final frame with an
  `"UNAVAILABLE"` error itself, so every request ends with one `:reply`.

  `MLBridge.Transport.Port` (an `mlbridge port --protocol mux` child process)
  is the one shipped. A native gRPC transport, speaking
  `orchestrator/proto/mlbridge.proto` directly, would implement this same
  behaviour; it is future work (docs/elixir.md).
  """

  alias MLBridge.Error

  @typedoc "A started transport process."
  @type server :: GenServer.server()

  @typedoc "A mux request without its `\"id\"`: `%{\"op\" => \"call\", \"bridge\" => ..., ...}`."
  @type op :: %{required(String.t()) => term()}

  @typedoc "Attachments in wire order."
  @type attachments :: [{String.t(), binary()}]

  @typedoc "The id of a request in flight, unique on this node; it tags the owner's messages."
  @type request_id :: pos_integer()

  @doc "A child spec starting the transport with `opts`."
  @callback child_spec(opts :: keyword()) :: Supervisor.child_spec()

  @doc "Sends `op`; its events and final reply go to `owner` tagged with the returned id."
  @callback request(server(), op(), attachments(), owner :: pid()) ::
              {:ok, request_id()} | {:error, Error.t()}

  @doc "Sends `op` (an `answer`, say) whose reply nobody waits for."
  @callback notify(server(), op(), attachments()) :: :ok | {:error, Error.t()}

  @doc "Cancels request `id` of this transport and stops delivering its messages."
  @callback cancel(server(), request_id()) :: :ok

  @doc "Whether a call with this gRPC `call_id` is in flight on this transport."
  @callback in_flight?(server(), call_id :: String.t()) :: boolean()
end
