defmodule MLBridge.Stream do
  @moduledoc """
  A streaming call (`MLBridge.stream/4`): an enumerable of `MLBridge.Event`s.

  It is lazy: the request is sent when enumeration starts, from the process
  that enumerates, and its events arrive in that process's mailbox, so one
  stream is consumed by one process. Halting early (`Enum.take/2`, an
  exception) cancels the call. The last event is `:result` or `:error`;
  `result/1` runs a stream to that end.

  The struct is also the call's handle: `MLBridge.cancel/2` takes it (from
  any process), and `call_id` is known before the stream starts.

  With the `:tools` option (a map of tool name to a one-argument function),
  each `"tool_call"` request event is answered before it is emitted: the
  function gets the tool's arguments (a map) and returns the result (any
  JSON term), `{:ok, result}` or `{:error, message}`; an exception it raises
  is sent as the answer's error. A tool name the map lacks is answered with
  an error. Other requests are left to the consumer: `MLBridge.answer/2`.
  """

  alias MLBridge.{Error, Event, Request}

  defstruct [:instance, :bridge, :op, :call_id, opts: []]

  @typedoc "A client tool: gets the tool's arguments, returns its result."
  @type tool :: (map() -> term())

  @type t :: %__MODULE__{
          instance: MLBridge.Registry.instance(),
          bridge: atom() | String.t() | nil,
          op: map(),
          call_id: String.t(),
          opts: keyword()
        }

  @doc """
  Runs `events` (a stream, or any enumerable of events) to its end: the
  result event's data, or its error.
  """
  @spec result(Enumerable.t()) :: {:ok, term()} | {:error, Error.t()}
  def result(events) do
    with {:ok, %Event{data: data}} <- final(events), do: {:ok, data}
  end

  @doc false
  # Runs `events` to their end: the result event, or the error.
  @spec final(Enumerable.t()) :: {:ok, Event.t()} | {:error, Error.t()}
  def final(events) do
    Enum.reduce_while(events, {:error, Error.new("INTERNAL", "the stream ended without a result")}, fn
      %Event{kind: :result} = event, _ -> {:halt, {:ok, event}}
      %Event{kind: :error, error: error}, _ -> {:halt, {:error, error}}
      %Event{}, acc -> {:cont, acc}
    end)
  end

  @doc false
  @spec events(t()) :: Enumerable.t()
  def events(%__MODULE__{} = stream) do
    Stream.resource(fn -> open(stream) end, &next/1, &close/1)
  end

  defp open(stream) do
    tools = Keyword.get(stream.opts, :tools)

    with {:ok, attachments} <- Request.attachments(stream.opts),
         {:ok, pending} <- Request.start(stream.instance, stream.bridge, stream.op, attachments, stream.opts) do
      %{pending: pending, tools: tools, done: false}
    else
      {:error, error} -> %{pending: nil, failed: error, done: false}
    end
  end

  defp next(%{done: true} = state), do: {:halt, state}

  defp next(%{pending: nil, failed: error} = state),
    do: {[%Event{kind: :error, error: error}], %{state | done: true}}

  defp next(%{pending: pending} = state) do
    case Request.await(pending) do
      {:event, header} ->
        event = Request.event(pending, header)
        answer_tool(event, state.tools)
        {[event], state}

      {:reply, header, attachments} ->
        {[Event.from_reply(header, attachments)], %{state | done: true}}

      {:failed, error} ->
        {[%Event{kind: :error, error: error}], %{state | done: true}}
    end
  end

  defp close(%{done: false, pending: pending}) when pending != nil, do: Request.stop(pending)
  defp close(_state), do: :ok

  defp answer_tool(%Event{kind: :request, request_kind: "tool_call", data: data} = event, tools)
       when is_map(tools) do
    tool = data["tool"]

    reply =
      case Map.fetch(tools, tool) do
        {:ok, fun} -> run_tool(fun, data["args"] || %{})
        :error -> {:error, "no client function for tool #{inspect(tool)}"}
      end

    answer(event, reply)
  end

  defp answer_tool(_event, _tools), do: :ok

  defp run_tool(fun, args) do
    case fun.(args) do
      {:ok, result} -> {:ok, result}
      {:error, message} -> {:error, to_string(message)}
      result -> {:ok, result}
    end
  rescue
    exception -> {:error, "#{inspect(exception.__struct__)}: #{Exception.message(exception)}"}
  end

  @doc false
  # Sends the answer to a request event; a result that is not JSON is sent as an error.
  @spec answer(Event.t(), {:ok, term()} | {:error, String.t()}) :: :ok | {:error, Error.t()}
  def answer(%Event{kind: :request, reply_to: {module, server, id}, request_id: request_id}, reply) do
    op = %{"op" => "answer", "target" => id, "request_id" => request_id}

    op =
      case reply do
        {:ok, result} -> Map.put(op, "result", result)
        {:error, message} -> Map.put(op, "error", message)
      end

    case module.notify(server, op, []) do
      {:error, %Error{code: "INVALID_ARGUMENT", message: why}} ->
        module.notify(
          server,
          op |> Map.delete("result") |> Map.put("error", "the client's answer: #{why}"),
          []
        )

      other ->
        other
    end
  end

  def answer(%Event{}, _reply),
    do: {:error, Error.new("INVALID_ARGUMENT", "only a :request event of a running stream can be answered")}

  defimpl Enumerable do
    def reduce(stream, acc, fun), do: Enumerable.reduce(MLBridge.Stream.events(stream), acc, fun)
    def count(_stream), do: {:error, __MODULE__}
    def member?(_stream, _event), do: {:error, __MODULE__}
    def slice(_stream), do: {:error, __MODULE__}
  end
end
