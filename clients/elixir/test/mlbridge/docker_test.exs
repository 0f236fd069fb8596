defmodule MLBridge.DockerTest do
  # The same client against an orchestrator whose workers are hardened containers
  # (the custom bridge: user Python in the sandbox).
  use ExUnit.Case, async: true

  @moduletag :docker

  alias MLBridge.{Error, Event}
  alias MLBridge.Adapters.Custom

  setup_all do
    {:ok, custom} = MLBridge.get_adapter(:custom, client: MLBridge.Docker)
    %{custom: custom}
  end

  test "bridges are served from docker" do
    assert {:ok, [%{"name" => "custom", "backend" => "docker"}]} =
             MLBridge.list_bridges(client: MLBridge.Docker)
  end

  test "calls, resources and streams run in a container worker", %{custom: custom} do
    assert {:ok, %{"result" => 45}} =
             Custom.run(custom, "def main(i):\n    return sum(range(i['n']))\n", %{n: 10})

    {:ok, id} =
      Custom.create(custom, "module", %{code: "def main(inputs):\n    return inputs['x'] * 2\n"}, [])

    assert {:ok, 42} = Custom.execute(custom, id, %{x: 21}, [])
    assert {:ok, true} = MLBridge.delete_resource(custom, id)

    events =
      Custom.stream_run(custom, "def main(i):\n    yield 1\n    yield 2\n    return 3\n") |> Enum.to_list()

    assert [1, 2] == for(%Event{kind: :chunk, data: d} <- events, do: d)
    assert %Event{kind: :result, data: %{"result" => 3}} = List.last(events)
  end

  test "attachments and cancel cross into the container", %{custom: custom} do
    bytes = <<0, 255, 128>> <> :crypto.strong_rand_bytes(5000)
    dir = "d#{System.unique_integer([:positive])}"
    assert {:ok, _} = Custom.upload(custom, %{"blob" => bytes}, dest: dir)
    assert {:ok, %{} = files} = Custom.download(custom, ["#{dir}/blob"])
    assert Map.values(files) == [bytes]

    call_id = "docker-#{System.unique_integer([:positive])}"
    task = Task.async(fn -> Custom.run(custom, "def main(i):\n    sleep(60)\n", %{}, call_id: call_id) end)
    MLBridge.Test.wait_until(fn -> MLBridge.cancel(call_id, client: MLBridge.Docker) == {:ok, true} end)
    assert {:error, %Error{code: "CANCELLED"}} = Task.await(task, 15_000)
  end
end
