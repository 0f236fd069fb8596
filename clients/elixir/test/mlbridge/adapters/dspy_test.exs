defmodule MLBridge.Adapters.DSPyTest do
  # One tenant, one dspy worker, one default LM: these run in order.
  use ExUnit.Case, async: false

  alias MLBridge.{Adapter, Error, Event}
  alias MLBridge.Adapters.DSPy

  setup_all do
    {:ok, dspy} = MLBridge.get_adapter(:dspy)
    %{dspy: dspy}
  end

  test "the adapter implements the behaviour", %{dspy: dspy} do
    assert %Adapter{module: DSPy} = dspy
    assert {DSPy.name(), DSPy.bridge()} == {:dspy, "dspy"}
    assert :programs in DSPy.capabilities()
    assert "program" in Adapter.resource_types(dspy)
    assert {:error, %Error{code: "UNKNOWN_COMMAND"}} = Adapter.create(dspy, "nonsense", %{})
  end

  test "configure_lm, create_program, execute_program with the dummy LM", %{dspy: dspy} do
    assert {:ok, %{"default_lm" => %{"provider" => "dummy"}}} =
             DSPy.configure_lm(dspy, %{provider: "dummy", answers: [%{answer: "4"}]})

    assert {:ok, sig} = DSPy.create_signature(dspy, "question -> answer", instructions: "Answer briefly.")
    assert {:ok, "ex-qa"} = DSPy.create_program(dspy, sig, resource_id: "ex-qa")
    assert {:ok, %{"answer" => "4"}} = DSPy.execute_program(dspy, "ex-qa", %{question: "2+2?"})
    assert {:ok, programs} = DSPy.programs(dspy)
    assert Enum.any?(programs, &(&1["resource_id"] == "ex-qa"))
    assert {:ok, %{"executions" => n}} = DSPy.stats(dspy)
    assert n >= 1
    assert {:ok, true} = MLBridge.delete_resource(dspy, "ex-qa")
  end

  test "a key handed to configure_lm travels as a secret, never shown; programs stream", %{dspy: dspy} do
    key = "sk-elixir-test-#{System.unique_integer([:positive])}"

    assert {:ok, reply} =
             DSPy.configure_lm(dspy, %{provider: "dummy", answers: [%{answer: "streamed"}], api_key: key})

    assert reply["default_lm"]["api_key_secret"] == "DSPY_API_KEY"
    refute inspect(reply) =~ key
    assert :ok = DSPy.set_secret(dspy, "OTHER_KEY", "value")

    {:ok, prog} = DSPy.create_program(dspy, %{"inputs" => ["question"], "outputs" => ["answer"]})
    events = DSPy.stream_program(dspy, prog, %{question: "stream?"}) |> Enum.to_list()
    assert %Event{kind: :result, data: %{"answer" => "streamed"}} = List.last(events)

    {:ok, lm} = DSPy.create_lm(dspy, %{provider: "dummy", answers: [%{answer: "from lm"}]})
    assert {:ok, %{"default_lm" => _}} = DSPy.configure_lm(dspy, %{lm: lm})
    assert {:ok, %{"answer" => "from lm"}} = Adapter.execute(dspy, prog, %{question: "which?"})
    MLBridge.delete_resource(dspy, prog)
  end

  test "optimize streams progress and names a new program", %{dspy: dspy} do
    train = [
      %{question: "1+1?", answer: "2"},
      %{question: "2+2?", answer: "4"},
      %{question: "3+3?", answer: "6"}
    ]

    {:ok, lm} =
      DSPy.create_lm(dspy, %{
        provider: "dummy",
        answers: Enum.map(train, &%{answer: &1.answer}) ++ [%{answer: "10"}]
      })

    {:ok, student} = DSPy.create_program(dspy, "question -> answer", lm: lm)
    {:ok, data} = DSPy.create_dataset(dspy, train, ["question"])

    assert {:ok, stream} =
             DSPy.optimize(dspy, student, data,
               metric: "contains",
               new_program_id: "ex-tuned",
               optimizer_args: %{max_bootstrapped_demos: 3, max_labeled_demos: 0}
             )

    events = Enum.to_list(stream)
    assert [%Event{kind: :progress, step: 0, total: 3} | _] = Enum.filter(events, &(&1.kind == :progress))

    assert %Event{kind: :result, data: %{"program_id" => "ex-tuned", "metric" => %{"passed" => 3}}} =
             List.last(events)

    assert {:ok, %{"answer" => "10"}} = DSPy.execute_program(dspy, "ex-tuned", %{question: "5+5?"})
    for id <- ["ex-tuned", student, data, lm], do: MLBridge.delete_resource(dspy, id)
  end
end
