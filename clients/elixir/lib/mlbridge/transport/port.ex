defmodule MLBridge.Transport.Port do
  @moduledoc """
  The transport over an `mlbridge port --protocol mux` child process.

  The GenServer owns an Erlang port opened with `{:spawn_executable,
  mlbridge}`, `{:packet, 4}`, `:binary` and `:exit_status`: the child reads
  mux frames on its stdin and forwards them to the orchestrator over gRPC,
  so this node needs no gRPC library. Requests from any number of processes
  are in flight at once, matched to their replies by id; the caller encodes
  its own frame, so this process only writes frames and routes what comes
  back (see `MLBridge.Transport` for the messages an owner receives).

  When the child dies (killed, crashed, its orchestrator address wrong),
  every request in flight gets an `"UNAVAILABLE"` reply and the child is
  started again: at once if it had greeted (it was healthy), else after a
  backoff doubling from 100 ms to `:max_backoff`. While it is down, requests
  fail at once with `"UNAVAILABLE"`. A request's owner that exits has its
  requests cancelled.

  ## Options

  - `:executable`: path of `mlbridge` (default: `$MLBRIDGE_EXECUTABLE`, else
    `mlbridge` on the `PATH`).
  - `:address`: the orchestrator, `host:port` or `unix:///path` (default
    `$MLBRIDGE_ADDRESS`, else `127.0.0.1:50051`).
  - `:token`: bearer token; passed in the child's environment
    (`MLBRIDGE_TOKEN`), never on its command line, which `ps` shows.
  - `:tls_ca`, `:tls_cert`, `:tls_key`: PEM files for TLS / mutual TLS.
  - `:max_frame_bytes`, `:concurrency`: the child's `--max-frame-bytes` and
    `--concurrency`.
  - `:env`: extra environment for the child, `[{"NAME", "value"}]`.
  - `:max_backoff`: longest wait between restarts of a failing child, ms
    (default 5000).
  - `:name`: a name to register the process under.
  """

  use GenServer

  @behaviour MLBridge.Transport

  require Logger

  alias MLBridge.{Error, Transport}
  alias MLBridge.Transport.Frame

  @protocol "mlbridge-mux"
  @version 1
  @first_backoff 100

  @typedoc "Options of `start_link/1` (see the module doc)."
  @type option ::
          {:executable, Path.t()}
          | {:address, String.t()}
          | {:token, String.t() | nil}
          | {:tls_ca, Path.t()}
          | {:tls_cert, Path.t()}
          | {:tls_key, Path.t()}
          | {:max_frame_bytes, pos_integer()}
          | {:concurrency, pos_integer()}
          | {:env, [{String.t(), String.t()}]}
          | {:max_backoff, pos_integer()}
          | {:name, GenServer.name()}

  @doc "Starts the transport and its `mlbridge port` child; fails when the executable cannot be found."
  @spec start_link([option()]) :: GenServer.on_start()
  def start_link(opts) do
    {name, opts} = Keyword.pop(opts, :name)
    GenServer.start_link(__MODULE__, opts, if(name, do: [name: name], else: []))
  end

  @impl Transport
  def child_spec(opts) do
    %{id: Keyword.get(opts, :name, __MODULE__), start: {__MODULE__, :start_link, [opts]}}
  end

  @impl Transport
  def request(server, op, attachments, owner) when is_map(op) and is_pid(owner) do
    id = System.unique_integer([:positive, :monotonic])

    with {:ok, frame} <- encode(Map.put(op, "id", id), attachments) do
      call(server, {:request, id, op["call_id"], frame, owner})
    end
  end

  @impl Transport
  def notify(server, op, attachments \\ []) when is_map(op) do
    id = System.unique_integer([:positive, :monotonic])

    with {:ok, frame} <- encode(Map.put(op, "id", id), attachments),
         {:ok, ^id} <- call(server, {:request, id, nil, frame, nil}) do
      :ok
    end
  end

  @impl Transport
  def cancel(server, id) when is_integer(id) do
    case call(server, {:cancel, id}) do
      {:error, %Error{}} -> :ok
      :ok -> :ok
    end
  end

  @impl Transport
  def in_flight?(server, call_id) when is_binary(call_id) do
    call(server, {:in_flight?, call_id}) == true
  end

  @doc """
  Facts about the transport: `:status` (`:up` or `:down`), `:os_pid` of the
  child, its greeting `:hello`, `:in_flight` requests and `:restarts`.
  """
  @spec info(Transport.server()) :: map()
  def info(server), do: GenServer.call(server, :info)

  defp encode(header, attachments) do
    case Frame.encode(header, attachments) do
      {:ok, frame} -> {:ok, frame}
      {:error, reason} -> {:error, Error.new("INVALID_ARGUMENT", "cannot send the request: #{reason}")}
    end
  end

  defp call(server, message) do
    GenServer.call(server, message, :infinity)
  catch
    :exit, reason ->
      {:error,
       Error.new("UNAVAILABLE", "the mlbridge transport is not running: #{inspect(reason, limit: 5)}")}
  end

  # -- the server ------------------------------------------------------------------------------

  @impl GenServer
  def init(opts) do
    Process.flag(:trap_exit, true)

    with {:ok, executable} <- executable(opts) do
      state = %{
        executable: executable,
        args: args(opts),
        env: env(opts),
        max_backoff: Keyword.get(opts, :max_backoff, 5000),
        port: nil,
        os_pid: nil,
        hello: nil,
        failures: 0,
        restarts: 0,
        last_exit: nil,
        # id => %{owner: pid | nil, monitor: reference | nil, call_id: String.t() | nil}
        requests: %{},
        monitors: %{}
      }

      case open(state) do
        {:ok, state} -> {:ok, state}
        {:error, reason} -> {:stop, reason}
      end
    end
  end

  @impl GenServer
  def handle_call({:request, id, call_id, frame, owner}, _from, state) do
    cond do
      state.port == nil ->
        {:reply, {:error, unavailable(state)}, state}

      write(state.port, frame) ->
        monitor = if owner, do: Process.monitor(owner)
        requests = Map.put(state.requests, id, %{owner: owner, monitor: monitor, call_id: call_id})
        monitors = if monitor, do: Map.put(state.monitors, monitor, id), else: state.monitors
        {:reply, {:ok, id}, %{state | requests: requests, monitors: monitors}}

      true ->
        {:reply, {:error, unavailable(state)}, state}
    end
  end

  def handle_call({:cancel, id}, _from, state), do: {:reply, :ok, cancel_request(state, id)}

  def handle_call({:in_flight?, call_id}, _from, state) do
    {:reply, Enum.any?(state.requests, fn {_id, r} -> r.call_id == call_id end), state}
  end

  def handle_call(:info, _from, state) do
    info = %{
      status: if(state.port, do: :up, else: :down),
      os_pid: state.os_pid,
      hello: state.hello,
      in_flight: map_size(state.requests),
      restarts: state.restarts
    }

    {:reply, info, state}
  end

  @impl GenServer
  def handle_info({port, {:data, body}}, %{port: port} = state) do
    case Frame.decode(body) do
      {:ok, header, attachments} ->
        {:noreply, route(state, header, attachments)}

      {:error, reason} ->
        Logger.error("mlbridge port sent a frame that cannot be read (#{reason}); dropped")
        {:noreply, state}
    end
  end

  def handle_info({port, {:exit_status, status}}, %{port: port} = state) do
    {:noreply, port_down(state, "the mlbridge port process exited with status #{status}")}
  end

  def handle_info({:EXIT, port, reason}, %{port: port} = state) do
    {:noreply, port_down(state, "the mlbridge port closed: #{inspect(reason)}")}
  end

  def handle_info({:EXIT, _port, _reason}, state), do: {:noreply, state}

  def handle_info({:DOWN, monitor, :process, _pid, _reason}, state) do
    case Map.fetch(state.monitors, monitor) do
      {:ok, id} -> {:noreply, cancel_request(state, id)}
      :error -> {:noreply, state}
    end
  end

  def handle_info(:reopen, %{port: nil} = state) do
    case open(state) do
      {:ok, state} ->
        {:noreply, state}

      {:error, reason} ->
        {:noreply, schedule_reopen(%{state | last_exit: "cannot start mlbridge port: #{inspect(reason)}"})}
    end
  end

  def handle_info(_message, state), do: {:noreply, state}

  @impl GenServer
  def terminate(_reason, %{port: port} = state) when port != nil do
    # Closing stdin tells the child to answer what is in flight and exit 0.
    Port.close(port)
    fail_all(state, "the mlbridge transport stopped")
  end

  def terminate(_reason, _state), do: :ok

  # -- the child process ------------------------------------------------------------------------

  defp executable(opts) do
    case Keyword.get(opts, :executable) || System.get_env("MLBRIDGE_EXECUTABLE") ||
           System.find_executable("mlbridge") do
      nil ->
        {:error,
         {:executable_not_found, "mlbridge is not on the PATH; set :executable or MLBRIDGE_EXECUTABLE"}}

      path ->
        if File.regular?(path), do: {:ok, path}, else: {:error, {:executable_not_found, path}}
    end
  end

  defp args(opts) do
    address = Keyword.get(opts, :address) || System.get_env("MLBRIDGE_ADDRESS") || "127.0.0.1:50051"

    tls =
      for {key, flag} <- [tls_ca: "--tls-ca", tls_cert: "--tls-cert", tls_key: "--tls-key"],
          value = Keyword.get(opts, key),
          do: [flag, value]

    limits =
      for {key, flag} <- [max_frame_bytes: "--max-frame-bytes", concurrency: "--concurrency"],
          value = Keyword.get(opts, key),
          do: [flag, Integer.to_string(value)]

    List.flatten([tls, "port", "--protocol", "mux", "--address", address, limits])
  end

  defp env(opts) do
    token = if token = Keyword.get(opts, :token), do: [{"MLBRIDGE_TOKEN", token}], else: []

    for {name, value} <- token ++ Keyword.get(opts, :env, []),
        do: {String.to_charlist(name), String.to_charlist(value)}
  end

  defp open(state) do
    port =
      Port.open({:spawn_executable, state.executable}, [
        {:args, state.args},
        {:env, state.env},
        {:packet, 4},
        :binary,
        :exit_status
      ])

    {:os_pid, os_pid} = Port.info(port, :os_pid)
    {:ok, %{state | port: port, os_pid: os_pid, hello: nil}}
  rescue
    error in ErlangError -> {:error, error.original}
  end

  defp write(port, frame) do
    Port.command(port, frame)
  rescue
    ArgumentError -> false
  end

  defp port_down(state, why) do
    Logger.warning("#{why}; #{map_size(state.requests)} request(s) in flight failed, restarting it")
    fail_all(state, why)

    state = %{
      state
      | port: nil,
        os_pid: nil,
        requests: %{},
        monitors: %{},
        last_exit: why,
        restarts: state.restarts + 1
    }

    if state.hello do
      send(self(), :reopen)
      %{state | failures: 0}
    else
      schedule_reopen(state)
    end
  end

  defp schedule_reopen(state) do
    delay = min(@first_backoff * Integer.pow(2, state.failures), state.max_backoff)
    Process.send_after(self(), :reopen, delay)
    %{state | failures: state.failures + 1}
  end

  defp unavailable(state) do
    Error.new("UNAVAILABLE", "the mlbridge port is restarting (#{state.last_exit}); retry the call")
  end

  # -- routing ---------------------------------------------------------------------------------

  defp route(state, %{"hello" => hello}, _attachments) do
    if hello["protocol"] == @protocol and hello["version"] == @version do
      %{state | hello: hello, failures: 0}
    else
      Logger.error("mlbridge port greeted with #{inspect(hello)}, not #{@protocol} version #{@version}")
      state
    end
  end

  defp route(state, %{"id" => id} = header, attachments) when id != nil do
    case Map.fetch(state.requests, id) do
      {:ok, request} when is_map_key(header, "event") ->
        deliver(request, id, {:event, header})
        state

      {:ok, request} ->
        deliver(request, id, {:reply, header, attachments})
        forget(state, id)

      # A reply to a request cancelled here, or to a notification: nobody waits for it.
      :error ->
        state
    end
  end

  defp route(state, %{"id" => nil, "ok" => false, "error" => error}, _attachments) do
    Logger.error("mlbridge port refused a frame it could not read: #{inspect(error)}")
    state
  end

  defp route(state, header, _attachments) do
    Logger.error("mlbridge port sent a frame without a usable id: #{inspect(header, limit: 8)}")
    state
  end

  defp deliver(%{owner: nil}, _id, _message), do: :ok
  defp deliver(%{owner: owner}, id, message), do: send(owner, {:mlbridge, id, message})

  defp forget(state, id) do
    {request, requests} = Map.pop(state.requests, id)

    monitors =
      if request.monitor do
        Process.demonitor(request.monitor, [:flush])
        Map.delete(state.monitors, request.monitor)
      else
        state.monitors
      end

    %{state | requests: requests, monitors: monitors}
  end

  defp cancel_request(state, id) do
    case state.requests do
      %{^id => _} ->
        {:ok, frame} =
          Frame.encode(%{"id" => System.unique_integer([:positive]), "op" => "cancel", "target" => id})

        write(state.port, frame)
        forget(state, id)

      _ ->
        state
    end
  end

  defp fail_all(state, why) do
    error = %{"code" => "UNAVAILABLE", "message" => why, "details" => %{}}

    for {id, request} <- state.requests,
        do: deliver(request, id, {:reply, %{"id" => id, "ok" => false, "error" => error}, []})

    :ok
  end
end
