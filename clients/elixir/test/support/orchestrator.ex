defmodule MLBridge.Test.Orchestrator do
  @moduledoc """
  A real `mlbridge serve` for the tests: an OS process on a free local port,
  with its own config, state directory and log file, stopped (SIGTERM, then
  SIGKILL) when the test run ends.
  """

  use GenServer

  @stop_wait_ms 20_000

  @doc "The `mlbridge` the tests run: `$MLBRIDGE_EXECUTABLE`, else `mlbridge` on the PATH."
  @spec executable!() :: Path.t()
  def executable! do
    System.get_env("MLBRIDGE_EXECUTABLE") || System.find_executable("mlbridge") ||
      raise "mlbridge not found: put it on the PATH or set MLBRIDGE_EXECUTABLE"
  end

  @doc """
  Starts `mlbridge serve --backend BACKEND` serving `bridges` (YAML text of
  the `bridges:` mapping) in a fresh state directory; `setup` runs with the
  state directory before the server starts (to add models to its store).
  """
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts), do: GenServer.start_link(__MODULE__, opts)

  @doc "The `host:port` it listens on."
  @spec address(GenServer.server()) :: String.t()
  def address(server), do: GenServer.call(server, :address)

  @doc "Its log (stdout and stderr) so far."
  @spec log(GenServer.server()) :: String.t()
  def log(server), do: File.read!(GenServer.call(server, :log_path))

  @doc "Stops the server process and waits for it to exit."
  @spec stop(GenServer.server()) :: :ok
  def stop(server), do: GenServer.stop(server, :normal, @stop_wait_ms + 5_000)

  @impl true
  def init(opts) do
    Process.flag(:trap_exit, true)
    backend = Keyword.fetch!(opts, :backend)
    dir = Path.join(System.tmp_dir!(), "mlbridge-exunit-#{backend}-#{System.unique_integer([:positive])}")
    File.mkdir_p!(Path.join(dir, "state"))
    if setup = opts[:setup], do: setup.(Path.join(dir, "state"))
    address = "127.0.0.1:#{free_port()}"
    config = Path.join(dir, "config.yaml")

    File.write!(config, """
    default_bridge: #{Keyword.fetch!(opts, :default)}
    backend: #{backend}
    bridges:
    #{Keyword.fetch!(opts, :bridges)}
    """)

    log_path = Path.join(dir, "serve.log")
    args = ["serve", "--config", config, "--listen", address, "--state-dir", Path.join(dir, "state")]

    port =
      Port.open({:spawn_executable, executable!()}, [
        {:args, args},
        {:env, [{~c"MLBRIDGE_LOG_LEVEL", ~c"WARNING"}]},
        :binary,
        :exit_status,
        :stderr_to_stdout
      ])

    {:os_pid, os_pid} = Port.info(port, :os_pid)

    {:ok,
     %{
       port: port,
       os_pid: os_pid,
       address: address,
       dir: dir,
       log: File.open!(log_path, [:write]),
       log_path: log_path
     }}
  end

  @impl true
  def handle_call(:address, _from, state), do: {:reply, state.address, state}
  def handle_call(:log_path, _from, state), do: {:reply, state.log_path, state}

  @impl true
  def handle_info({port, {:data, data}}, %{port: port} = state) do
    IO.binwrite(state.log, data)
    {:noreply, state}
  end

  def handle_info({port, {:exit_status, status}}, %{port: port} = state),
    do: {:stop, {:orchestrator_exited, status, state.log_path}, %{state | port: nil}}

  def handle_info(_message, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, %{port: nil} = state), do: File.close(state.log)

  def terminate(_reason, state) do
    System.cmd("kill", ["-TERM", Integer.to_string(state.os_pid)])

    receive do
      {_port, {:exit_status, _}} -> :ok
    after
      @stop_wait_ms -> System.cmd("kill", ["-KILL", Integer.to_string(state.os_pid)])
    end

    File.close(state.log)
    File.rm_rf(state.dir)
  end

  defp free_port do
    {:ok, socket} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
    {:ok, port} = :inet.port(socket)
    :gen_tcp.close(socket)
    port
  end
end
