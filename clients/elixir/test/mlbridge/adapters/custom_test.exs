defmodule MLBridge.Adapters.CustomTest do
  use ExUnit.Case, async: true

  alias MLBridge.{Adapter, Error, Event}
  alias MLBridge.Adapters.{Custom, Generic}

  setup_all do
    {:ok, custom} = MLBridge.get_adapter(:custom)
    %{custom: custom}
  end

  test "runs Python's main(inputs) with its output captured", %{custom: custom} do
    code = "def main(inputs):\n    print('hello from python')\n    return sum(range(inputs['n']))\n"
    assert {:ok, %{"result" => 45, "stdout" => "hello from python\n"}} = Custom.run(custom, code, %{n: 10})
    assert {:error, %Error{code: "INVALID_ARGUMENT", message: message}} = Custom.run(custom, "def main(:\n")
    assert message =~ "line"
    assert {Custom.name(), Custom.bridge(), :run in Custom.capabilities()} == {:custom, "custom", true}
  end

  test "a generator main streams its items", %{custom: custom} do
    code = "def main(inputs):\n    for i in range(3):\n        yield {'i': i}\n    return 'done'\n"
    events = Custom.stream_run(custom, code) |> Enum.to_list()
    assert [%{"i" => 0}, %{"i" => 1}, %{"i" => 2}] = for(%Event{kind: :chunk, data: d} <- events, do: d)
    assert %Event{kind: :result, data: %{"result" => "done", "chunk_count" => 3}} = List.last(events)
  end

  test "user resource types", %{custom: custom} do
    type = "acc#{System.unique_integer([:positive])}"

    code = """
    class Acc:
        def create(self, config):
            self.total = config.get('start', 0)
        def execute(self, inputs):
            self.total += inputs['add']
            return {'total': self.total}
    """

    assert {:ok, _} = Custom.register_type(custom, type, code, "Acc")
    assert {:ok, id} = Custom.create(custom, type, %{start: 5}, [])
    assert {:ok, %{"total" => 7}} = Custom.execute(custom, id, %{add: 2}, [])
    MLBridge.delete_resource(custom, id)
  end

  test "files go up and come back as raw bytes", %{custom: custom} do
    dir = "ex#{System.unique_integer([:positive])}"
    bytes = <<0, 255, 254, 10>> <> :crypto.strong_rand_bytes(1000)
    assert {:ok, %{"files" => [_]}} = Custom.upload(custom, %{"data.bin" => bytes}, dest: dir)
    assert {:ok, %{"entries" => entries}} = Custom.list_files(custom, path: dir)
    assert Enum.any?(entries, &(&1["path"] =~ "data.bin"))
    path = "#{dir}/data.bin"
    assert {:ok, %{^path => ^bytes}} = Custom.download(custom, [path])
  end

  test "a long run is cancelled by call id", %{custom: custom} do
    call_id = "custom-#{System.unique_integer([:positive])}"
    task = Task.async(fn -> Custom.run(custom, "def main(i):\n    sleep(60)\n", %{}, call_id: call_id) end)
    MLBridge.Test.wait_until(fn -> MLBridge.cancel(call_id) == {:ok, true} end)
    assert {:error, %Error{code: "CANCELLED"}} = Task.await(task, 15_000)
  end

  test "the generic adapter of a bridge without its own" do
    assert {:ok, %Adapter{module: Generic} = mock} = MLBridge.get_adapter(:mock)
    assert "echo" in Adapter.operations(mock)
    assert Adapter.namespace(mock) == "mock"
    assert {:ok, %{"x" => 1}} = Adapter.command(mock, "echo", %{x: 1})
    assert {:ok, id} = Adapter.create(mock, "counter", %{start: 1})
    assert {:ok, %{"value" => 2}} = Adapter.execute(mock, id, %{})
    assert {Generic.name(), Generic.bridge(), :commands in Generic.capabilities()} == {:generic, "mock", true}
    MLBridge.delete_resource(mock, id)
  end
end
