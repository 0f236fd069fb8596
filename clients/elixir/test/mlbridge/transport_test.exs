defmodule MLBridge.Transport.PortTest do
  # Instances of their own: these tests kill and starve their transports.
  use ExUnit.Case, async: false

  alias MLBridge.Error
  alias MLBridge.Transport.Port, as: Transport

  defp start_instance(name, transport_opts \\ []) do
    opts = [
      name: name,
      bridges: [mock: %{}],
      transport: Keyword.merge(MLBridge.Test.transport(), transport_opts)
    ]

    start_supervised!({MLBridge, opts})
    [{_module, pid}] = MLBridge.Registry.transports(name)
    pid
  end

  test "the child greets with the mux protocol" do
    pid = start_instance(:greeting)
    MLBridge.Test.wait_until(fn -> Transport.info(pid).hello end)

    assert %{status: :up, hello: %{"protocol" => "mlbridge-mux", "version" => 1, "max_frame_bytes" => max}} =
             Transport.info(pid)

    assert max > 0
  end

  test "a killed port process fails the calls in flight, is restarted, and later calls work" do
    pid = start_instance(:reconnect)
    assert {:ok, _} = MLBridge.call(:mock, "mock:echo", %{}, client: :reconnect)
    %{os_pid: os_pid, restarts: 0} = Transport.info(pid)

    task = Task.async(fn -> MLBridge.call(:mock, "mock:nap", %{seconds: 30}, client: :reconnect) end)
    MLBridge.Test.wait_until(fn -> Transport.info(pid).in_flight == 1 end)
    {_, 0} = System.cmd("kill", ["-9", Integer.to_string(os_pid)])

    assert {:error, %Error{code: "UNAVAILABLE", message: message}} = Task.await(task, 10_000)
    assert message =~ "exited with status"

    assert {:ok, %{"after" => "restart"}} =
             MLBridge.call(:mock, "mock:echo", %{after: "restart"}, client: :reconnect)

    assert %{status: :up, restarts: 1, os_pid: new_pid} = Transport.info(pid)
    assert new_pid != os_pid
  end

  test "a request whose caller exits is cancelled" do
    pid = start_instance(:owner_exit)
    call_id = "owner-exit-#{System.unique_integer([:positive])}"

    task =
      Task.async(fn ->
        MLBridge.call(:mock, "mock:nap", %{seconds: 30}, client: :owner_exit, call_id: call_id)
      end)

    MLBridge.Test.wait_until(fn -> Transport.in_flight?(pid, call_id) end)
    Task.shutdown(task, :brutal_kill)
    MLBridge.Test.wait_until(fn -> Transport.info(pid).in_flight == 0 end)
    MLBridge.Test.wait_until(fn -> MLBridge.cancel(call_id, client: :owner_exit) == {:ok, false} end)
  end

  test "an oversized frame is PAYLOAD_TOO_LARGE and the port goes on" do
    start_instance(:small_frames, max_frame_bytes: 4096)

    assert {:error, %Error{code: "PAYLOAD_TOO_LARGE"}} =
             MLBridge.call(:mock, "mock:echo", %{pad: String.duplicate("x", 10_000)}, client: :small_frames)

    assert {:ok, %{"small" => true}} =
             MLBridge.call(:mock, "mock:echo", %{small: true}, client: :small_frames)
  end

  test "a child that keeps failing is restarted with backoff and calls fail fast" do
    pid = start_instance(:failing, executable: System.find_executable("false"))
    MLBridge.Test.wait_until(fn -> Transport.info(pid).restarts >= 2 end)
    assert {:error, %Error{code: "UNAVAILABLE"}} = MLBridge.call(:mock, "mock:echo", %{}, client: :failing)
  end

  test "an executable that does not exist stops the instance from starting" do
    Process.flag(:trap_exit, true)
    opts = [name: :no_exe, bridges: [mock: %{}], transport: [executable: "/nonexistent/mlbridge"]]
    assert {:error, _} = MLBridge.start_link(opts)
  end

  test "calls on an instance that is not running are UNAVAILABLE" do
    assert {:error, %Error{code: "UNAVAILABLE"}} =
             MLBridge.call(:mock, "mock:echo", %{}, client: :not_started)
  end
end
