defmodule MLBridge.DSPexPortTest do
  # DSPex's own Elixir side, unchanged but for the executable: a raw Erlang port
  # speaking JSON frames {id, command, args} to `mlbridge port --mode pool-worker`.
  use ExUnit.Case, async: false

  alias MLBridge.JSON

  @max_frame 4096

  setup do
    port =
      Port.open({:spawn_executable, MLBridge.Test.Orchestrator.executable!()}, [
        {:args,
         ["port", "--mode", "pool-worker", "--worker-id", "w1", "--address", MLBridge.Test.address(:process)] ++
           ["--max-frame-bytes", Integer.to_string(@max_frame)]},
        {:packet, 4},
        :binary,
        :exit_status
      ])

    on_exit(fn -> if Port.info(port), do: Port.close(port) end)
    %{port: port}
  end

  defp request(port, id, command, args \\ %{}) do
    {:ok, frame} = JSON.encode_to_binary(%{id: id, command: command, args: args})
    true = Port.command(port, frame)
    reply(port, id)
  end

  defp reply(port, id) do
    receive do
      {^port, {:data, data}} ->
        {:ok, %{"id" => ^id} = reply} = JSON.decode(data)
        reply
    after
      60_000 -> flunk("no reply to request #{inspect(id)}")
    end
  end

  defp ok!(port, id, command, args \\ %{}) do
    assert %{"success" => true, "result" => result} = request(port, id, command, args)
    result
  end

  test "DSPex's whole command set, sessions, an oversized frame, and shutdown", %{port: port} do
    assert %{"status" => "ok", "worker_id" => "w1", "mode" => "pool-worker"} = ok!(port, 1, "ping")

    assert %{"status" => "configured", "provider" => "dummy"} =
             ok!(port, 2, "configure_lm", %{
               model: "dummy",
               provider: "dummy",
               answers: [%{answer: "4"}],
               temperature: 0.0
             })

    signature = %{inputs: [%{name: "question"}], outputs: [%{name: "answer"}]}

    for session <- ["s1", "s2"] do
      assert %{"program_id" => "p1", "status" => "created"} =
               ok!(port, "create-#{session}", "create_program", %{
                 id: "p1",
                 session_id: session,
                 signature: signature
               })
    end

    assert %{"program_id" => "p1", "outputs" => %{"answer" => "4"}} =
             ok!(port, 3, "execute_program", %{
               program_id: "p1",
               session_id: "s1",
               inputs: %{question: "2+2?"}
             })

    assert %{"programs" => [%{"id" => "p1"}], "total_count" => 1} =
             ok!(port, 4, "list_programs", %{session_id: "s1"})

    assert %{"program_id" => "p1", "execution_count" => 1} =
             ok!(port, 5, "get_program_info", %{program_id: "p1", session_id: "s1"})

    assert %{} = ok!(port, 6, "update_session_data", %{session_id: "s1", data: %{"user" => "ada", "n" => 1}})

    ok!(port, 7, "update_session_data", %{session_id: "s1", data: %{"n" => 2}})
    assert inspect(ok!(port, 8, "get_session_data", %{session_id: "s1"})) =~ ~s("user" => "ada")
    assert inspect(ok!(port, 9, "get_session_data", %{session_id: "s1"})) =~ ~s("n" => 2)

    assert %{"program_id" => "p1", "status" => "deleted"} =
             ok!(port, 10, "delete_program", %{program_id: "p1", session_id: "s2"})

    # DSPex's wording, "Program not found: p1"; in pool-worker mode the port names the session too.
    assert %{"success" => false, "error" => "Program not found" <> detail, "error_code" => "NOT_FOUND"} =
             request(port, 11, "get_program_info", %{program_id: "p1", session_id: "s2"})

    assert String.ends_with?(detail, ": p1")

    assert %{"programs_count" => _, "command_count" => _} = ok!(port, 12, "get_stats")

    # A frame over --max-frame-bytes is answered for its id; the port keeps serving.
    {:ok, big} =
      JSON.encode_to_binary(%{id: 13, command: "ping", args: %{pad: String.duplicate("x", @max_frame * 2)}})

    true = Port.command(port, big)
    assert %{"success" => false, "error_code" => "PAYLOAD_TOO_LARGE"} = reply(port, 13)
    assert %{"status" => "ok"} = ok!(port, 14, "ping")

    assert %{"success" => false, "error_code" => "UNKNOWN_COMMAND", "error" => "Unknown command: " <> _} =
             request(port, 15, "no_such_command")

    ok!(port, 16, "cleanup_session", %{session_id: "s1"})
    assert %{"programs" => [], "total_count" => 0} = ok!(port, 17, "list_programs", %{session_id: "s1"})
    assert %{"status" => "cleaned"} = ok!(port, 18, "cleanup")
    assert %{"status" => "reset"} = ok!(port, 19, "reset_state")

    assert %{"worker_id" => "w1"} = ok!(port, 20, "shutdown")

    receive do
      {^port, {:exit_status, status}} -> assert status == 0
    after
      30_000 -> flunk("the port did not exit after shutdown")
    end
  end
end
