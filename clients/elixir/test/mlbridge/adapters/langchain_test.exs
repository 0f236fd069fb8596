defmodule MLBridge.Adapters.LangChainTest do
  use ExUnit.Case, async: true

  alias MLBridge.{Error, Event}
  alias MLBridge.Adapters.LangChain

  setup_all do
    {:ok, lc} = MLBridge.get_adapter(:langchain)
    %{lc: lc}
  end

  test "the adapter implements the behaviour" do
    assert {LangChain.name(), LangChain.bridge()} == {:langchain, "langchain"}
    assert :client_tools in LangChain.capabilities()
  end

  test "a chain: create_chain, invoke, batch, stream", %{lc: lc} do
    {:ok, model} =
      LangChain.create_model(lc, "fake", %{"responses" => ["Paris is the capital."], "cycle" => true})

    {:ok, prompt} = LangChain.create_prompt(lc, %{template: "What is the capital of {country}?"})
    assert {:ok, chain} = LangChain.create_chain(lc, %{prompt: prompt, model: model, parser: "str"})
    assert {:ok, "Paris is the capital."} = LangChain.invoke(lc, chain, %{"country" => "France"})

    assert {:ok, ["Paris is the capital.", "Paris is the capital."]} =
             LangChain.batch(lc, chain, ["France", "Japan"], max_concurrency: 2)

    events = LangChain.stream(lc, chain, "France") |> Enum.to_list()
    tokens = for %Event{kind: :chunk, data: %{"type" => "token", "text" => t}} <- events, do: t
    assert length(tokens) > 1 and Enum.join(tokens) == "Paris is the capital."
    assert %Event{kind: :result, data: %{"output" => "Paris is the capital."}} = List.last(events)
    assert {:ok, %{"output" => "Paris is the capital."}} = LangChain.execute(lc, chain, %{input: "Spain"}, [])
  end

  test "an inline chain runs once, unary and streamed", %{lc: lc} do
    inline = %{
      prompt: %{template: "Say hi to {name}"},
      model: %{provider: "fake", responses: ["Hello, Ada!"], cycle: true},
      parser: "str"
    }

    assert {:ok, "Hello, Ada!"} = LangChain.invoke(lc, inline, %{"name" => "Ada"})

    assert {:ok, %{"output" => "Hello, Ada!"}} =
             MLBridge.Stream.result(LangChain.stream(lc, inline, %{"name" => "Ada"}))
  end

  test "an agent with a code tool, a client tool answered in Elixir, and memory", %{lc: lc} do
    {:ok, add} =
      LangChain.create_tool(
        lc,
        "@tool\ndef add(a: int, b: int) -> int:\n    '''Add two integers.'''\n    return a + b\n"
      )

    {:ok, lookup} =
      LangChain.create_client_tool(lc, %{
        name: "order_status",
        description: "The shipping status of an order.",
        parameters: %{type: "object", properties: %{order: %{type: "string"}}, required: ["order"]}
      })

    {:ok, model} =
      LangChain.create_model(lc, "fake", %{
        cycle: true,
        responses: [
          %{
            tool_calls: [%{name: "add", args: %{a: 20, b: 22}}, %{name: "order_status", args: %{order: "A7"}}]
          },
          "{tool:add}, and {tool:order_status}. You said: {humans}"
        ]
      })

    {:ok, memory} = LangChain.create_memory(lc)

    {:ok, agent} =
      LangChain.create_agent(lc, %{
        model: model,
        tools: [add, lookup],
        memory: memory,
        system_prompt: "Use the tools."
      })

    me = self()

    tools = %{
      "order_status" => fn %{"order" => order} ->
        send(me, {:tool_ran_in, self()})
        "order #{order} has shipped"
      end
    }

    assert {:ok, %{"output" => "42, and order A7 has shipped. You said: Hi!", "thread_id" => "t1"}} =
             LangChain.invoke(lc, agent, "Hi!", thread_id: "t1", tools: tools)

    assert_received {:tool_ran_in, pid} when pid == self()

    events = LangChain.stream(lc, agent, "Again", thread_id: "t1", tools: tools) |> Enum.to_list()

    assert [%Event{request_kind: "tool_call", data: %{"tool" => "order_status"}}] =
             Enum.filter(events, &(&1.kind == :request))

    assert %Event{kind: :result, data: %{"output" => "42, and order A7 has shipped. You said: Hi! | Again"}} =
             List.last(events)

    # A client tool failing ends the turn with the client's message.
    failing = %{"order_status" => fn _ -> raise "database down" end}

    assert {:error, %Error{code: "FRAMEWORK_ERROR", message: message}} =
             LangChain.invoke(lc, agent, "x", thread_id: "t2", tools: failing)

    assert message =~ "database down"

    # Unary, a client tool cannot be answered: the bridge says to stream.
    {:ok, asking} =
      LangChain.create_model(lc, "fake", %{
        responses: [%{tool_calls: [%{name: "order_status", args: %{order: "B1"}}]}]
      })

    {:ok, unary_agent} = LangChain.create_agent(lc, %{model: asking, tools: [lookup]})
    assert {:error, %Error{code: "INVALID_ARGUMENT", message: unary}} = LangChain.invoke(lc, unary_agent, "x")
    assert unary =~ "stream"
    assert {:ok, %{} = stats} = LangChain.stats(lc)
    assert map_size(stats) > 0
  end
end
