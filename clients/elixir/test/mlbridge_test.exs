defmodule MLBridgeTest do
  # The public API against the real process-backend orchestrator of test_helper.exs.
  use ExUnit.Case, async: true

  alias MLBridge.{Error, Event, Reply}

  defp uid(prefix), do: "#{prefix}-#{System.unique_integer([:positive])}"

  describe "the orchestrator" do
    test "list_bridges names every served bridge with its default" do
      assert {:ok, bridges} = MLBridge.list_bridges()
      names = Enum.map(bridges, & &1["name"])
      assert Enum.sort(names) == ~w(custom dspy langchain mock transformers)
      assert [%{"name" => "mock"}] = Enum.filter(bridges, & &1["is_default"])
      assert Enum.all?(bridges, &(&1["backend"] == "process"))
    end

    test "describe lists a bridge's commands and resource types" do
      assert {:ok, description} = MLBridge.describe(:mock)
      commands = Enum.map(description["commands"], & &1["name"])
      assert "mock:echo" in commands and "mock:stream" in commands
      assert ~w(counter journal ticker) -- Enum.map(description["resource_types"], & &1["name"]) == []
    end

    test "stats answers with the orchestrator's counters" do
      assert {:ok, %{} = stats} = MLBridge.stats()
      assert map_size(stats) > 0
    end

    test "a bridge the orchestrator does not serve is UNKNOWN_BRIDGE" do
      assert {:error, %Error{code: "UNKNOWN_BRIDGE", message: message}} = MLBridge.describe("nope")
      assert message =~ "mock"
      assert {:error, %Error{code: "UNKNOWN_BRIDGE"}} = MLBridge.get_adapter("nope")
    end
  end

  describe "resources" do
    test "create, execute, list and delete a resource" do
      id = uid("counter")
      assert {:ok, ^id} = MLBridge.create_resource(:mock, "counter", %{start: 10}, resource_id: id)
      assert {:ok, %{"value" => 12}} = MLBridge.execute_resource(:mock, id, %{add: 2})
      assert {:ok, %{"value" => 13}} = MLBridge.execute_resource(:mock, id)

      assert {:ok, listed} = MLBridge.list_resources(:mock, "counter")

      assert %{"bridge" => "mock", "type" => "counter", "created_unix_ms" => created} =
               Enum.find(listed, &(&1["resource_id"] == id))

      assert is_integer(created)
      assert {:ok, all} = MLBridge.list_resources()
      assert Enum.any?(all, &(&1["resource_id"] == id))
      assert {:ok, tickers} = MLBridge.list_resources(:mock, "ticker")
      refute Enum.any?(tickers, &(&1["resource_id"] == id))

      assert {:ok, true} = MLBridge.delete_resource(:mock, id)
      assert {:error, %Error{code: "NOT_FOUND"}} = MLBridge.delete_resource(:mock, id)
      assert {:error, %Error{code: "NOT_FOUND"}} = MLBridge.execute_resource(:mock, id, %{})
    end

    test "the orchestrator makes an id when none is given" do
      assert {:ok, id} = MLBridge.create_resource(:mock, "counter")
      assert is_binary(id) and id != ""
      assert {:ok, true} = MLBridge.delete_resource(:mock, id)
    end

    test "detailed replies carry the call id and metadata" do
      assert {:ok, %Reply{result: id, call_id: nil}} =
               MLBridge.create_resource(:mock, "counter", %{}, detailed: true)

      assert {:ok, %Reply{result: %{"value" => 1}, call_id: "exec-" <> _}} =
               MLBridge.execute_resource(:mock, id, %{}, detailed: true, call_id: uid("exec"))

      MLBridge.delete_resource(:mock, id)
    end

    test "bad inputs are INVALID_ARGUMENT from the bridge" do
      {:ok, id} = MLBridge.create_resource(:mock, "counter")

      assert {:error, %Error{code: "INVALID_ARGUMENT", message: message}} =
               MLBridge.execute_resource(:mock, id, %{add: "two"})

      assert message =~ "inputs.add must be an integer"
      MLBridge.delete_resource(:mock, id)
    end

    test "an unknown resource type is refused" do
      assert {:error, %Error{code: code}} = MLBridge.create_resource(:mock, "no_such_type")
      assert code in ["INVALID_ARGUMENT", "UNKNOWN_COMMAND", "NOT_FOUND"]
    end
  end

  describe "calls" do
    test "a command's result comes back as decoded JSON" do
      args = %{"text" => "héllo ✓ \u{1F600}", "n" => [1, 2.5, nil, true], "nested" => %{"a" => %{}}}
      assert {:ok, ^args} = MLBridge.call(:mock, "mock:echo", args)
    end

    test "an unknown command is UNKNOWN_COMMAND naming the namespaces" do
      assert {:error, %Error{code: "UNKNOWN_COMMAND", message: message}} = MLBridge.call(:mock, "nope:thing")
      assert message =~ "mock"
    end

    test "args that break the command's schema are INVALID_ARGUMENT" do
      assert {:error, %Error{code: "INVALID_ARGUMENT"}} =
               MLBridge.call(:mock, "mock:sleep", %{seconds: "long"})
    end

    test "args that are not JSON are refused before sending" do
      assert {:error, %Error{code: "INVALID_ARGUMENT", message: message}} =
               MLBridge.call(:mock, "mock:echo", %{bytes: <<255, 0>>})

      assert message =~ "attachment"
      assert {:error, %Error{code: "INVALID_ARGUMENT"}} = MLBridge.call(:mock, "mock:echo", %{t: {1, 2}})
    end

    test "a framework's failure keeps its code and details" do
      assert {:error, %Error{code: "FRAMEWORK_ERROR", message: message, details: details}} =
               MLBridge.call(:mock, "mock:fail", %{message: "kaput"})

      assert message =~ "kaput"
      assert details["framework_error"] == "MockFrameworkError"
    end

    test "attachments cross as raw bytes, both ways" do
      blob = <<0, 255, 128, 10, 13, 0xC3, 0x28>> <> :crypto.strong_rand_bytes(100_000)
      small = <<0xFF, 0xFE>>

      assert {:ok, %Reply{result: result, attachments: attachments}} =
               MLBridge.call(:mock, "mock:attach", %{},
                 attachments: %{"blob" => blob, "small" => small},
                 detailed: true
               )

      assert result == %{"sizes" => %{"blob" => byte_size(blob), "small" => 2}}
      assert attachments == %{"blob" => reverse(blob), "small" => <<0xFE, 0xFF>>}
    end

    test "a timeout becomes the call's deadline" do
      assert {:error, %Error{code: "DEADLINE_EXCEEDED"}} =
               MLBridge.call(:mock, "mock:sleep", %{seconds: 5}, timeout: 300)

      assert {:error, %Error{code: "INVALID_ARGUMENT"}} = MLBridge.call(:mock, "mock:echo", %{}, timeout: -1)
    end

    test "a bridge the registry does not list is still reachable by its name" do
      assert {:ok, %{"result" => 2}} =
               MLBridge.call("custom", "custom:run", %{code: "def main(i):\n    return 2\n"})
    end

    test "50 concurrent callers each get their own reply" do
      results =
        1..50
        |> Enum.map(fn i ->
          Task.async(fn ->
            {i, MLBridge.call(:mock, "mock:echo", %{i: i, pad: String.duplicate("x", i * 100)})}
          end)
        end)
        |> Task.await_many(60_000)

      for {i, reply} <- results do
        assert {:ok, %{"i" => ^i, "pad" => pad}} = reply
        assert byte_size(pad) == i * 100
      end
    end
  end

  describe "streams" do
    test "a streaming command yields progress and chunks, then the result" do
      events = MLBridge.stream(:mock, "mock:stream", %{n: 3}) |> Enum.to_list()
      assert Enum.map(events, & &1.kind) == [:progress, :chunk, :progress, :chunk, :progress, :chunk, :result]

      assert [%{"index" => 0, "token" => "t0"}, %{"index" => 1}, %{"index" => 2}] =
               for(%Event{kind: :chunk, data: d} <- events, do: d)

      assert [%Event{step: 1, total: 3, message: "chunk 1 of 3"} | _] = events
      assert %Event{kind: :result, data: %{"count" => 3}} = List.last(events)
      assert Enum.all?(events, &(&1.call_id == hd(events).call_id))
    end

    test "a streaming resource runs by id" do
      id = uid("ticker")
      {:ok, ^id} = MLBridge.create_resource(:mock, "ticker", %{label: "L"}, resource_id: id)
      stream = MLBridge.stream(:mock, id, %{n: 2})

      assert [%{"tick" => 1, "label" => "L"}, %{"tick" => 2}] =
               for(%Event{kind: :chunk, data: d} <- stream, do: d)

      assert {:ok, %{"ticks" => 4}} = MLBridge.Stream.result(MLBridge.stream(:mock, {:resource, id}, %{n: 4}))
      MLBridge.delete_resource(:mock, id)
    end

    test "a stream's call id is known before it starts" do
      stream = MLBridge.stream(:mock, {:command, "mock:stream"}, %{n: 1}, call_id: "known-id-1")
      assert stream.call_id == "known-id-1"
      assert Enum.all?(stream, &(&1.call_id == "known-id-1"))
    end

    test "a failing stream ends with an error event" do
      assert [%Event{kind: :error, error: %Error{code: "UNKNOWN_COMMAND"}}] =
               Enum.to_list(MLBridge.stream(:mock, "mock:nothing"))

      assert {:error, %Error{code: "NOT_FOUND"}} =
               MLBridge.Stream.result(MLBridge.stream(:mock, {:resource, "no-such-resource"}))
    end

    test "halting a stream early cancels its call" do
      call_id = uid("halted")

      assert [%Event{kind: :progress}] =
               MLBridge.stream(:mock, "mock:stream", %{n: 1000, delay: 0.05}, call_id: call_id)
               |> Enum.take(1)

      # The call is gone: cancelling it again finds nothing, once the orchestrator has processed the first cancel.
      MLBridge.Test.wait_until(fn -> MLBridge.cancel(call_id) == {:ok, false} end)
      refute_received {:mlbridge, _, _}
    end

    test "a request event is answered with answer/2 while the stream goes on" do
      events =
        MLBridge.stream(:mock, "mock:ask", %{questions: ["name?", "age?"]})
        |> Enum.map(fn
          %Event{kind: :request, request_kind: "question", data: %{"question" => q}} = event ->
            :ok = MLBridge.answer(event, {:ok, "answer to #{q}"})
            event

          event ->
            event
        end)

      assert %Event{kind: :result, data: %{"answers" => ["answer to name?", "answer to age?"]}} =
               List.last(events)

      assert {:error, %Error{code: "INVALID_ARGUMENT"}} = MLBridge.answer(List.last(events), {:ok, 1})
    end

    test "an error answer fails the asking call" do
      result =
        MLBridge.stream(:mock, "mock:ask", %{questions: ["?"]})
        |> Stream.each(fn
          %Event{kind: :request} = event -> MLBridge.answer(event, {:error, "no idea"})
          _ -> :ok
        end)
        |> MLBridge.Stream.result()

      assert {:error, %Error{message: message}} = result
      assert message =~ "no idea"
    end
  end

  describe "cancel" do
    test "cancels a unary call by its call id from another process" do
      call_id = uid("nap")
      task = Task.async(fn -> MLBridge.call(:mock, "mock:nap", %{seconds: 30}, call_id: call_id) end)
      MLBridge.Test.wait_until(fn -> MLBridge.cancel(call_id) == {:ok, true} end)
      assert {:error, %Error{code: "CANCELLED"}} = Task.await(task, 10_000)
    end

    test "cancels a stream by its handle" do
      stream = MLBridge.stream(:mock, "mock:stream", %{n: 1000, delay: 0.05})
      parent = self()

      task =
        Task.async(fn ->
          Enum.map(stream, fn event ->
            send(parent, :streaming)
            event.kind
          end)
        end)

      assert_receive :streaming, 10_000
      assert {:ok, true} = MLBridge.cancel(stream)
      kinds = Task.await(task, 10_000)
      assert List.last(kinds) == :error
      assert length(kinds) < 1000
    end

    test "a call id nobody runs is not found" do
      assert {:ok, false} = MLBridge.cancel(uid("nobody"))
    end
  end

  defp reverse(binary), do: binary |> :binary.bin_to_list() |> Enum.reverse() |> :binary.list_to_bin()
end
