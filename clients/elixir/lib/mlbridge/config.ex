defmodule MLBridge.Config do
  @moduledoc """
  Reads and checks the options of an MLBridge instance (`MLBridge.start_link/1`),
  and builds them from the application environment.

  Application configuration (the seed's shape):

      config :mlbridge, :ml_bridges,
        default: :dspy,
        bridges: [
          dspy: %{adapter: MLBridge.Adapters.DSPy, pool_size: 4, required_env: ["GEMINI_API_KEY"]},
          langchain: %{adapter: MLBridge.Adapters.LangChain, pool_size: 2}
        ]

      config :mlbridge, :transport, address: "127.0.0.1:50051", token: System.get_env("MLBRIDGE_TOKEN")

  DSPex's `config :dspex, :ml_bridges` is read when `:mlbridge` has none,
  with a deprecation warning; its `DSPex.*` adapter modules and
  `python_script` paths give way to the built-in adapters.

  A bridge entry's keys:

  - `:adapter`: a module implementing `MLBridge.Adapter` (default: the
    built-in adapter of the bridge's name, else `MLBridge.Adapters.Generic`).
  - `:pool_size`: how many transports (`mlbridge port` processes) this
    node opens for the bridge; each carries up to `--concurrency` requests
    at once, so more only helps past what one port process forwards (default 1).
    The orchestrator's own warm workers are its `bridges.<name>.pool_size`.
  - `:required_env`: environment variables this node must have to use the
    bridge (e.g. a key it hands to `configure_lm`); a missing one is logged
    at start and reported by `MLBridge.health/1` and `MLBridge.Registry.validate/1`.
  - `:bridge`: the orchestrator's name for the bridge (default: the key).
  - `:transport`: options overriding the instance's `:transport` for this
    bridge (another address or token, say).
  """

  require Logger

  alias MLBridge.Error

  @builtin %{
    "dspy" => MLBridge.Adapters.DSPy,
    "langchain" => MLBridge.Adapters.LangChain,
    "transformers" => MLBridge.Adapters.Transformers,
    "custom" => MLBridge.Adapters.Custom
  }

  @entry_keys [:adapter, :pool_size, :required_env, :bridge, :transport, :python_script]

  @typedoc "A bridge of the registry, as `MLBridge.Registry.bridges/1` lists it."
  @type entry :: %{
          name: atom(),
          bridge: String.t(),
          adapter: module(),
          pool_size: pos_integer(),
          required_env: [String.t()],
          transport: keyword()
        }

  @typedoc "An instance's checked configuration."
  @type t :: %{
          name: atom(),
          default: atom(),
          bridges: %{atom() => entry()},
          transport: {module(), keyword()},
          timeout: timeout()
        }

  @doc """
  The instance options from the application environment, or `nil` when
  neither `config :mlbridge, :ml_bridges` nor DSPex's `config :dspex, :ml_bridges` is set.
  """
  @spec from_app_env() :: keyword() | nil
  def from_app_env do
    case {Application.get_env(:mlbridge, :ml_bridges), Application.get_env(:dspex, :ml_bridges)} do
      {nil, nil} ->
        nil

      {nil, legacy} ->
        Logger.warning(
          "config :dspex, :ml_bridges is deprecated: rename it to config :mlbridge, :ml_bridges (docs/elixir.md)"
        )

        instance_opts(legacy)

      {current, _} ->
        instance_opts(current)
    end
  end

  defp instance_opts(ml_bridges) do
    Keyword.merge(Enum.to_list(ml_bridges),
      transport: Application.get_env(:mlbridge, :transport, []),
      timeout: Application.get_env(:mlbridge, :timeout, :infinity)
    )
  end

  @doc "Checks instance options (see `MLBridge.start_link/1`) and normalises them."
  @spec new(keyword()) :: {:ok, t()} | {:error, Error.t()}
  def new(opts) when is_list(opts) do
    given = Keyword.get(opts, :bridges, [])

    with {:ok, bridges} <- bridges(given),
         {:ok, default} <- default(Keyword.get(opts, :default), given, bridges),
         {:ok, transport} <- transport(Keyword.get(opts, :transport, [])) do
      {:ok,
       %{
         name: Keyword.get(opts, :name, MLBridge),
         default: default,
         bridges: bridges,
         transport: transport,
         timeout: Keyword.get(opts, :timeout, :infinity)
       }}
    end
  end

  @doc "The adapter module serving the bridge named `bridge` when its entry names none."
  @spec builtin_adapter(String.t()) :: module()
  def builtin_adapter(bridge), do: Map.get(@builtin, bridge, MLBridge.Adapters.Generic)

  defp bridges([]), do: invalid("give at least one bridge in :bridges")

  defp bridges(bridges) when is_list(bridges) or is_map(bridges) do
    Enum.reduce_while(bridges, {:ok, %{}}, fn
      {name, spec}, {:ok, acc} when is_atom(name) and (is_map(spec) or is_list(spec)) ->
        case entry(name, Map.new(spec)) do
          {:ok, entry} -> {:cont, {:ok, Map.put(acc, name, entry)}}
          error -> {:halt, error}
        end

      other, _acc ->
        {:halt, invalid("a bridge is `name: %{...}` with an atom name, got #{inspect(other)}")}
    end)
  end

  defp bridges(other), do: invalid(":bridges must be a keyword list or a map, got #{inspect(other)}")

  defp entry(name, spec) do
    bridge = to_string(Map.get(spec, :bridge, name))
    pool_size = Map.get(spec, :pool_size, 1)
    required_env = Map.get(spec, :required_env, [])

    cond do
      (unknown = Map.keys(spec) -- @entry_keys) != [] ->
        invalid("bridge #{inspect(name)}: unknown keys #{inspect(unknown)}; known: #{inspect(@entry_keys)}")

      not (is_integer(pool_size) and pool_size > 0) ->
        invalid("bridge #{inspect(name)}: pool_size must be a positive integer, got #{inspect(pool_size)}")

      not (is_list(required_env) and Enum.all?(required_env, &is_binary/1)) ->
        invalid("bridge #{inspect(name)}: required_env must be a list of strings")

      true ->
        if Map.has_key?(spec, :python_script) do
          Logger.warning(
            "bridge #{inspect(name)}: python_script is ignored; the orchestrator serves the bridge"
          )
        end

        {:ok,
         %{
           name: name,
           bridge: bridge,
           adapter: adapter(name, bridge, Map.get(spec, :adapter)),
           pool_size: pool_size,
           required_env: required_env,
           transport: Map.get(spec, :transport, [])
         }}
    end
  end

  defp adapter(_name, bridge, nil), do: builtin_adapter(bridge)

  defp adapter(name, bridge, module) when is_atom(module) do
    if Code.ensure_loaded?(module) and function_exported?(module, :capabilities, 0) do
      module
    else
      builtin = builtin_adapter(bridge)

      Logger.warning(
        "bridge #{inspect(name)}: #{inspect(module)} is not an MLBridge.Adapter (a DSPex adapter?); using #{inspect(builtin)}"
      )

      builtin
    end
  end

  # Without :default, the first bridge listed.
  defp default(nil, given, bridges) when is_list(given), do: default(elem(hd(given), 0), given, bridges)
  defp default(nil, given, bridges), do: default(given |> Map.keys() |> Enum.min(), given, bridges)

  defp default(name, _given, bridges) do
    if Map.has_key?(bridges, name),
      do: {:ok, name},
      else: invalid("default bridge #{inspect(name)} is not one of #{inspect(Map.keys(bridges))}")
  end

  defp transport({module, opts}) when is_atom(module) and is_list(opts), do: {:ok, {module, opts}}
  defp transport(opts) when is_list(opts), do: {:ok, {MLBridge.Transport.Port, opts}}

  defp transport(other),
    do: invalid(":transport must be a keyword list or {module, opts}, got #{inspect(other)}")

  defp invalid(message), do: {:error, Error.new("INVALID_ARGUMENT", message)}
end
