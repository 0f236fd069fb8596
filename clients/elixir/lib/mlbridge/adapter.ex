defmodule MLBridge.Adapter do
  @moduledoc """
  A framework adapter: the behaviour every adapter implements, and the
  handle `MLBridge.get_adapter/2` returns.

  The handle (`%MLBridge.Adapter{}`) names the adapter `module`, the
  `instance` and `bridge` it talks to, and the bridge's `description` (its
  commands and resource types, from `MLBridge.describe/2`). It is what every
  adapter function takes first, and it works as the `bridge` of any
  `MLBridge` function:

      {:ok, lc} = MLBridge.get_adapter(:langchain)
      {:ok, chain} = MLBridge.Adapters.LangChain.create_chain(lc, %{prompt: ..., model: ...})
      {:ok, "..."} = MLBridge.Adapters.LangChain.invoke(lc, chain, %{"country" => "France"})
      MLBridge.list_resources(lc, "chain")

  Generic operations are the behaviour's callbacks, so code can treat
  adapters alike (`adapter.module.create(adapter, type, config, [])`, or
  `create/4` and `execute/4` here); each framework's own vocabulary is in
  its module: `MLBridge.Adapters.DSPy`, `MLBridge.Adapters.LangChain`,
  `MLBridge.Adapters.Transformers`, `MLBridge.Adapters.Custom`, and
  `MLBridge.Adapters.Generic` for any other bridge.

  An adapter of your own implements the callbacks and is named in the
  registry: `bridges: [mine: %{adapter: MyApp.MineAdapter}]`.
  """

  alias MLBridge.Error

  defstruct [:module, :instance, :bridge, description: %{}]

  @type t :: %__MODULE__{
          module: module(),
          instance: MLBridge.Registry.instance(),
          bridge: atom() | String.t(),
          description: map()
        }

  @doc "The framework the adapter serves (`:dspy`)."
  @callback name() :: atom()

  @doc "The orchestrator's usual name of the bridge the adapter serves (`\"dspy\"`)."
  @callback bridge() :: String.t()

  @doc "What the adapter offers beyond the generic operations (`:streaming`, `:client_tools`, ...)."
  @callback capabilities() :: [atom()]

  @doc "Creates a resource of one of the bridge's types; returns its id."
  @callback create(t(), type :: String.t(), config :: map(), [MLBridge.option()]) ::
              {:ok, String.t()} | {:error, Error.t()}

  @doc "Runs a resource; returns its result in the framework's shape."
  @callback execute(t(), resource_id :: String.t(), inputs :: term(), [MLBridge.option()]) ::
              {:ok, term()} | {:error, Error.t()}

  @doc "`create/4` of the adapter's module: checks `type` against the bridge's resource types first."
  @spec create(t(), String.t(), map(), [MLBridge.option()]) :: {:ok, String.t()} | {:error, Error.t()}
  def create(%__MODULE__{module: module} = adapter, type, config, opts \\ []) do
    with :ok <- check_type(adapter, type), do: module.create(adapter, type, config, opts)
  end

  @doc "`execute/4` of the adapter's module."
  @spec execute(t(), String.t(), term(), [MLBridge.option()]) :: {:ok, term()} | {:error, Error.t()}
  def execute(%__MODULE__{module: module} = adapter, resource_id, inputs, opts \\ []),
    do: module.execute(adapter, resource_id, inputs, opts)

  @doc "The bridge's resource types, from its description."
  @spec resource_types(t()) :: [String.t()]
  def resource_types(%__MODULE__{description: description}),
    do: for(%{"name" => name} <- Map.get(description, "resource_types", []), do: name)

  @doc "The bridge's own operations (`\"echo\"` for `mock:echo`), from its description."
  @spec operations(t()) :: [String.t()]
  def operations(%__MODULE__{description: description} = adapter) do
    prefix = namespace(adapter) <> ":"

    for %{"name" => name} <- Map.get(description, "commands", []),
        String.starts_with?(name, prefix),
        do: String.replace_prefix(name, prefix, "")
  end

  @doc "The namespace of the bridge's commands (`\"dspy\"` in `dspy:stats`)."
  @spec namespace(t()) :: String.t()
  def namespace(%__MODULE__{description: description, bridge: bridge}),
    do: Map.get(description, "bridge") || to_string(bridge)

  @doc "Calls the bridge's `namespace:operation` command with `args`."
  @spec command(t(), String.t(), term(), [MLBridge.option()]) :: {:ok, term()} | {:error, Error.t()}
  def command(%__MODULE__{} = adapter, operation, args \\ %{}, opts \\ []),
    do: MLBridge.call(adapter, namespace(adapter) <> ":" <> operation, args, opts)

  defp check_type(adapter, type) do
    types = resource_types(adapter)

    if type in types do
      :ok
    else
      {:error,
       Error.new(
         "UNKNOWN_COMMAND",
         "bridge #{inspect(adapter.bridge)} has no resource type #{inspect(type)}; types: #{Enum.join(types, ", ")}"
       )}
    end
  end
end
