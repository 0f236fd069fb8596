defmodule MLBridge.Adapters.LangChain do
  @moduledoc """
  The `langchain` bridge in LangChain's words: models, prompts, chains,
  tools (including client tools, run here in Elixir), memory and agents.

      {:ok, lc} = MLBridge.get_adapter(:langchain)
      {:ok, model} = LangChain.create_model(lc, "fake", %{responses: ["Paris."], cycle: true})
      {:ok, chain} = LangChain.create_chain(lc, %{prompt: %{template: "Capital of {country}?"}, model: model, parser: "str"})
      {:ok, "Paris."} = LangChain.invoke(lc, chain, %{"country" => "France"})

  A **client tool** is declared with `create_client_tool/3` (name,
  description, JSON schema of its arguments) and its body is an Elixir
  function passed with `tools:` to `invoke/4` or `stream/4`: when the model
  calls it, the stream carries a `"tool_call"` request, the function runs in
  the calling process with the arguments, and its return value is the
  answer the model sees (see `MLBridge.Stream`).

      {:ok, lookup} = LangChain.create_client_tool(lc, %{name: "lookup", description: "An order's status",
                                                        parameters: %{type: "object", properties: %{order: %{type: "string"}}}})
      {:ok, agent} = LangChain.create_agent(lc, %{model: model, tools: [lookup]})
      LangChain.invoke(lc, agent, "Where is A7?", tools: %{"lookup" => fn %{"order" => o} -> "\#{o} has shipped" end})
  """

  @behaviour MLBridge.Adapter

  alias MLBridge.{Adapter, Error}

  @impl true
  def name, do: :langchain

  @impl true
  def bridge, do: "langchain"

  @impl true
  def capabilities, do: [:chains, :agents, :memory, :streaming, :client_tools]

  @impl true
  def create(adapter, type, config, opts), do: MLBridge.create_resource(adapter, type, config, opts)

  @doc "Runs any runnable resource with the bridge's `{input, config}` (see `invoke/4` for the unwrapped form)."
  @impl true
  def execute(adapter, resource_id, inputs, opts),
    do: MLBridge.execute_resource(adapter, resource_id, inputs, opts)

  @doc "Creates a `model`: `provider` (`\"fake\"`, `\"openai\"`, `\"anthropic\"`, `\"google_genai\"`) and its config (`model`, `api_key_secret`, fake: `responses`, `cycle`)."
  @spec create_model(Adapter.t(), String.t(), map(), [MLBridge.option()]) ::
          {:ok, String.t()} | {:error, Error.t()}
  def create_model(adapter, provider, config \\ %{}, opts \\ []),
    do: MLBridge.create_resource(adapter, "model", Map.put(config, "provider", provider), opts)

  @doc "Creates a `prompt`: `%{template: ...}` or `%{messages: [...]}` (`variables`, `partial`, `template_format`)."
  @spec create_prompt(Adapter.t(), map(), [MLBridge.option()]) :: {:ok, String.t()} | {:error, Error.t()}
  def create_prompt(adapter, config, opts \\ []),
    do: MLBridge.create_resource(adapter, "prompt", config, opts)

  @doc "Creates a code `tool`: Python source of one `@tool` function, run in the sandbox."
  @spec create_tool(Adapter.t(), String.t(), [MLBridge.option()]) :: {:ok, String.t()} | {:error, Error.t()}
  def create_tool(adapter, code, opts \\ []) when is_binary(code),
    do: MLBridge.create_resource(adapter, "tool", %{"code" => code}, opts)

  @doc """
  Creates a client tool: `%{name, description, parameters}` (`parameters`
  a JSON schema; `timeout_s`). Its function is given at run time with `tools:`.
  """
  @spec create_client_tool(Adapter.t(), map(), [MLBridge.option()]) :: {:ok, String.t()} | {:error, Error.t()}
  def create_client_tool(adapter, spec, opts \\ []) when is_map(spec),
    do: MLBridge.create_resource(adapter, "tool", Map.put(spec, "client", true), opts)

  @doc "Creates a `memory`: conversation threads, kept by the orchestrator after every turn (`max_threads`)."
  @spec create_memory(Adapter.t(), map(), [MLBridge.option()]) :: {:ok, String.t()} | {:error, Error.t()}
  def create_memory(adapter, config \\ %{}, opts \\ []),
    do: MLBridge.create_resource(adapter, "memory", config, opts)

  @doc """
  Creates a chain through `langchain:create_chain`: `%{prompt, model, parser}`
  (ids or inline configs) or `%{code: ...}` defining `build()`; returns its id.
  """
  @spec create_chain(Adapter.t(), map(), [MLBridge.option()]) :: {:ok, String.t()} | {:error, Error.t()}
  def create_chain(adapter, chain_config, opts \\ []) when is_map(chain_config) do
    args = if id = opts[:resource_id], do: Map.put(chain_config, "resource_id", id), else: chain_config

    with {:ok, %{"chain_id" => id}} <-
           Adapter.command(adapter, "create_chain", args, Keyword.delete(opts, :resource_id)),
         do: {:ok, id}
  end

  @doc "Creates an `agent`: `%{model, tools: [tool ids], system_prompt, memory, name}`."
  @spec create_agent(Adapter.t(), map(), [MLBridge.option()]) :: {:ok, String.t()} | {:error, Error.t()}
  def create_agent(adapter, config, opts \\ []), do: MLBridge.create_resource(adapter, "agent", config, opts)

  @doc """
  Runs a runnable (an id, or an inline chain config run once) on `input`;
  a chain's value, or an agent's whole reply (`output`, `messages`,
  `thread_id`). Options: `:config` (`thread_id`, `tags`, `recursion_limit`,
  ...), `:thread_id`, `:tools` (client tool functions: then it streams to
  answer them), `:timeout`.
  """
  @spec invoke(Adapter.t(), String.t() | map(), term(), keyword()) :: {:ok, term()} | {:error, Error.t()}
  def invoke(adapter, runnable, input, opts \\ []) do
    args = %{"input" => input, "config" => run_config(opts)}

    result =
      cond do
        opts[:tools] -> MLBridge.Stream.result(stream(adapter, runnable, input, opts))
        is_map(runnable) -> Adapter.command(adapter, "invoke", Map.put(args, "runnable", runnable), opts)
        true -> MLBridge.execute_resource(adapter, runnable, args, opts)
      end

    with {:ok, reply} <- result, do: {:ok, unwrap(reply)}
  end

  @doc "Runs a runnable on each input, `:max_concurrency` at a time; the outputs in input order (`:return_exceptions`)."
  @spec batch(Adapter.t(), String.t(), [term()], keyword()) :: {:ok, [term()]} | {:error, Error.t()}
  def batch(adapter, runnable, inputs, opts \\ []) when is_list(inputs) do
    args = %{
      "inputs" => inputs,
      "config" => run_config(opts),
      "return_exceptions" => Keyword.get(opts, :return_exceptions, false)
    }

    args = if n = opts[:max_concurrency], do: Map.put(args, "max_concurrency", n), else: args

    with {:ok, %{"outputs" => outputs}} <- MLBridge.execute_resource(adapter, runnable, args, opts),
         do: {:ok, outputs}
  end

  @doc """
  Runs a runnable streaming: token chunks (`%{"type" => "token", "text" => ...}`),
  tool chunks, progress, requests (client tools answered with `:tools`),
  then the result (`%{"output" => ...}`). Options as `invoke/4`.
  """
  @spec stream(Adapter.t(), String.t() | map(), term(), keyword()) :: MLBridge.Stream.t()
  def stream(adapter, runnable, input, opts \\ []) do
    args = %{"input" => input, "config" => run_config(opts)}

    if is_map(runnable) do
      command = Adapter.namespace(adapter) <> ":stream"
      MLBridge.stream(adapter, {:command, command}, Map.put(args, "runnable", runnable), opts)
    else
      MLBridge.stream(adapter, {:resource, runnable}, args, opts)
    end
  end

  @doc "Resources by type and run counters of this tenant's worker."
  @spec stats(Adapter.t()) :: {:ok, map()} | {:error, Error.t()}
  def stats(adapter), do: Adapter.command(adapter, "stats")

  defp run_config(opts) do
    config = Keyword.get(opts, :config, %{})
    if id = opts[:thread_id], do: Map.put(config, "thread_id", id), else: config
  end

  # A chain's `%{"output" => x}` is `x`; an agent's reply (output, messages, thread_id) stays whole.
  defp unwrap(%{"output" => output} = reply) when map_size(reply) == 1, do: output
  defp unwrap(reply), do: reply
end
