defmodule MLBridge.Adapters.TransformersTest do
  # tiny-gpt2 (random weights) is in the store of test_helper.exs's orchestrator.
  use ExUnit.Case, async: false

  alias MLBridge.{Error, Event}
  alias MLBridge.Adapters.Transformers

  setup_all do
    {:ok, tf} = MLBridge.get_adapter(:transformers)
    {:ok, gpt} = Transformers.load_model(tf, "tiny-gpt2", dtype: "float32")
    %{tf: tf, gpt: gpt}
  end

  test "facts about the worker", %{tf: tf} do
    assert {Transformers.name(), Transformers.bridge()} == {:transformers, "transformers"}
    assert {:ok, %{} = devices} = Transformers.devices(tf)
    assert map_size(devices) > 0
    assert {:ok, %{} = stats} = Transformers.stats(tf)
    assert map_size(stats) > 0
  end

  test "generate streams text pieces, then the result", %{tf: tf, gpt: gpt} do
    events =
      Transformers.generate(tf, gpt, "Once upon", max_new_tokens: 5, do_sample: false) |> Enum.to_list()

    pieces = for %Event{kind: :chunk, data: %{"text" => t}} <- events, do: t
    assert pieces != []
    assert %Event{kind: :result, data: %{"output" => %{"text" => text}}} = List.last(events)
    assert text == Enum.join(pieces)
  end

  test "a pipeline over a loaded model, with a tokenizer", %{tf: tf, gpt: gpt} do
    assert {:ok, tok} = Transformers.load_tokenizer(tf, "tiny-gpt2")
    assert {:ok, pipe} = Transformers.pipeline(tf, "text-generation", model_resource: gpt, tokenizer: tok)
    assert {:ok, output} = Transformers.run(tf, pipe, "Hello", max_new_tokens: 3, do_sample: false)
    assert output != nil
    assert {:ok, true} = Transformers.delete(tf, pipe)
    assert {:error, %Error{code: "NOT_FOUND"}} = Transformers.run(tf, pipe, "Hello")
  end

  test "fine-tuning streams a progress event per step and names a new model", %{tf: tf, gpt: gpt} do
    {:ok, data} =
      Transformers.create_dataset(
        tf,
        {:file, "train.jsonl", String.duplicate(~s({"text": "hello world"}\n), 8)}
      )

    {:ok, rows} = Transformers.create_dataset(tf, List.duplicate(%{text: "hello there"}, 4))

    assert {:ok, stream} =
             Transformers.train(tf, gpt, data, args: %{max_steps: 2, per_device_train_batch_size: 2})

    events = Enum.to_list(stream)
    assert length(for %Event{kind: :progress} <- events, do: 1) >= 2
    assert %Event{kind: :result, data: %{"model_resource" => tuned, "steps" => 2}} = List.last(events)
    for id <- [tuned, data, rows], do: Transformers.delete(tf, id)
  end
end
