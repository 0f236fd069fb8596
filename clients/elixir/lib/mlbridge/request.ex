defmodule MLBridge.Request do
  @moduledoc false
  # Sending one request through a transport and waiting for its final frame,
  # in the caller's process. Streams use `start/4`, `next/1` and `stop/1`.

  alias MLBridge.{Error, Event, Registry, Reply}

  # How much longer than its :timeout the client waits, so the orchestrator's
  # own DEADLINE_EXCEEDED (with its details) normally arrives first.
  @grace_ms 5_000

  @typedoc "A request in flight, as its stream keeps it."
  @type pending :: %{
          module: module(),
          server: pid(),
          id: MLBridge.Transport.request_id(),
          monitor: reference(),
          deadline: integer() | :infinity
        }

  @doc false
  @spec run(Registry.instance(), atom() | String.t() | nil, map(), keyword()) ::
          {:ok, term()} | {:ok, Reply.t()} | {:error, Error.t()}
  def run(instance, bridge, op, opts) do
    with {:ok, attachments} <- attachments(opts),
         {:ok, pending} <- start(instance, bridge, op, attachments, opts) do
      finish(pending, opts)
    end
  end

  @doc false
  @spec run_on({module(), pid()}, map(), keyword()) :: {:ok, term()} | {:ok, Reply.t()} | {:error, Error.t()}
  def run_on(transport, op, opts) do
    with {:ok, pending} <- start_on(transport, op, [], opts), do: finish(pending, opts)
  end

  defp finish(pending, opts) do
    case await(pending) do
      {:reply, %{"ok" => true} = header, reply_attachments} -> {:ok, result(header, reply_attachments, opts)}
      {:reply, header, _} -> {:error, Error.from_wire(header["error"])}
      {:failed, error} -> {:error, error}
    end
  end

  defp result(header, attachments, opts) do
    if Keyword.get(opts, :detailed, false) do
      %Reply{
        result: header["result"],
        call_id: header["call_id"],
        attachments: Map.new(attachments),
        metadata: header["metadata"] || %{}
      }
    else
      header["result"]
    end
  end

  @doc false
  # Routes `op` to a transport of the instance and sends it.
  @spec start(Registry.instance(), atom() | String.t() | nil, map(), [{String.t(), binary()}], keyword()) ::
          {:ok, pending()} | {:error, Error.t()}
  def start(instance, bridge, op, attachments, opts) do
    with {:ok, route} <- Registry.route(instance, bridge) do
      op = put_bridge(op, route.bridge)
      start_on(route.transport, op, attachments, Keyword.put_new(opts, :timeout, route.timeout))
    end
  end

  @doc false
  # Sends `op` on a given transport.
  @spec start_on({module(), pid()}, map(), [{String.t(), binary()}], keyword()) ::
          {:ok, pending()} | {:error, Error.t()}
  def start_on({module, server}, op, attachments, opts) do
    timeout = Keyword.get(opts, :timeout, :infinity)

    with :ok <- check_timeout(timeout) do
      monitor = Process.monitor(server)

      case module.request(server, put_timeout(op, timeout), attachments, self()) do
        {:ok, id} ->
          {:ok, %{module: module, server: server, id: id, monitor: monitor, deadline: deadline(timeout)}}

        {:error, error} ->
          Process.demonitor(monitor, [:flush])
          {:error, error}
      end
    end
  end

  # Ops that name a bridge get the orchestrator's name for it.
  defp put_bridge(%{"bridge" => _} = op, bridge), do: %{op | "bridge" => bridge}
  defp put_bridge(op, _bridge), do: op

  defp put_timeout(op, :infinity), do: op

  defp put_timeout(%{"op" => kind} = op, ms) when kind in ~w(call create_resource execute_resource stream),
    do: Map.put(op, "timeout_s", ms / 1000)

  defp put_timeout(op, _ms), do: op

  defp check_timeout(:infinity), do: :ok
  defp check_timeout(ms) when is_integer(ms) and ms > 0, do: :ok

  defp check_timeout(other),
    do:
      {:error,
       Error.new(
         "INVALID_ARGUMENT",
         ":timeout must be a positive integer (ms) or :infinity, got #{inspect(other)}"
       )}

  defp deadline(:infinity), do: :infinity
  defp deadline(ms), do: System.monotonic_time(:millisecond) + ms + @grace_ms

  @doc false
  # The next message of a request: an event, its final frame, or a failure
  # of the client's own (transport gone, deadline passed: then it is cancelled).
  @spec await(pending()) ::
          {:event, map()} | {:reply, map(), [{String.t(), binary()}]} | {:failed, Error.t()}
  def await(%{id: id, monitor: monitor} = pending) do
    receive do
      {:mlbridge, ^id, {:event, header}} ->
        {:event, header}

      {:mlbridge, ^id, {:reply, header, attachments}} ->
        Process.demonitor(monitor, [:flush])
        {:reply, header, attachments}

      {:DOWN, ^monitor, :process, _, reason} ->
        {:failed, Error.new("UNAVAILABLE", "the mlbridge transport stopped: #{inspect(reason, limit: 5)}")}
    after
      wait(pending.deadline) ->
        stop(pending)
        {:failed, Error.new("DEADLINE_EXCEEDED", "no reply from the orchestrator within the call's timeout")}
    end
  end

  defp wait(:infinity), do: :infinity
  defp wait(deadline), do: max(deadline - System.monotonic_time(:millisecond), 0)

  @doc false
  # Cancels a request still in flight and drops whatever it already sent.
  @spec stop(pending()) :: :ok
  def stop(%{module: module, server: server, id: id, monitor: monitor}) do
    module.cancel(server, id)
    Process.demonitor(monitor, [:flush])
    flush(id)
  end

  defp flush(id) do
    receive do
      {:mlbridge, ^id, _} -> flush(id)
    after
      0 -> :ok
    end
  end

  @doc false
  @spec event(pending(), map()) :: Event.t()
  def event(pending, header), do: Event.from_event(header, {pending.module, pending.server, pending.id})

  @doc false
  # The `:attachments` option as wire pairs: a map or list of name => bytes.
  @spec attachments(keyword()) :: {:ok, [{String.t(), binary()}]} | {:error, Error.t()}
  def attachments(opts) do
    pairs = Keyword.get(opts, :attachments, [])

    if (is_map(pairs) or is_list(pairs)) and
         Enum.all?(pairs, &match?({name, bin} when (is_binary(name) or is_atom(name)) and is_binary(bin), &1)) do
      {:ok, Enum.map(pairs, fn {name, bin} -> {to_string(name), bin} end)}
    else
      {:error, Error.new("INVALID_ARGUMENT", ":attachments must map names to binaries")}
    end
  end
end
