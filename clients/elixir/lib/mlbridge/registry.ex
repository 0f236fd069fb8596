defmodule MLBridge.Registry do
  @moduledoc """
  The bridges an MLBridge instance knows, and runtime bridge selection.

  Each configured bridge (`MLBridge.Config`) has its adapter, its
  `required_env` and `pool_size` transports; one is the default, which
  `MLBridge.get_adapter/0` returns and `set_default/2` changes while the
  instance runs. A bridge the registry does not list can still be named in
  any call: it goes over the default bridge's transports, with the adapter
  its name suggests, and the orchestrator decides whether it exists.

  The table lives in the metadata of the instance's `Registry` of
  transports, so reading it costs no process round trip. (In this module,
  `Registry` is Elixir's.)
  """

  alias MLBridge.{Config, Error}

  @typedoc "An instance: the `:name` given to `MLBridge.start_link/1` (default `MLBridge`)."
  @type instance :: atom()

  @typedoc "What routing a request needs: the orchestrator's bridge name and a transport."
  @type route :: %{bridge: String.t(), transport: {module(), pid()}, timeout: timeout()}

  @doc false
  @spec child_spec(Config.t()) :: Supervisor.child_spec()
  def child_spec(config) do
    counters = :atomics.new(map_size(config.bridges), [])
    slots = config.bridges |> Map.keys() |> Enum.sort() |> Enum.with_index(1) |> Map.new()
    meta = [config: config, counters: counters, slots: slots]
    Registry.child_spec(keys: :unique, name: name(config.name), meta: meta)
  end

  @doc false
  @spec via(instance(), atom(), pos_integer()) :: {:via, module(), term()}
  def via(instance, bridge, index), do: {:via, Registry, {name(instance), {bridge, index}}}

  defp name(instance), do: Module.concat(instance, Transports)

  @doc "The configured bridges, the default first."
  @spec bridges(instance()) :: [Config.entry()]
  def bridges(instance \\ MLBridge) do
    config = config!(instance)
    config.bridges |> Map.values() |> Enum.sort_by(&{&1.name != config.default, &1.name})
  end

  @doc "The default bridge's name."
  @spec default(instance()) :: atom()
  def default(instance \\ MLBridge), do: config!(instance).default

  @doc "Makes `bridge` (a configured one) the default of the running instance."
  @spec set_default(instance(), atom()) :: :ok | {:error, Error.t()}
  def set_default(instance \\ MLBridge, bridge) when is_atom(bridge) do
    config = config!(instance)

    if Map.has_key?(config.bridges, bridge) do
      Registry.put_meta(name(instance), :config, %{config | default: bridge})
    else
      {:error, not_configured(bridge, config)}
    end
  end

  @doc "The entry of a configured bridge (by atom, or its string name)."
  @spec fetch(instance(), atom() | String.t()) :: {:ok, Config.entry()} | {:error, Error.t()}
  def fetch(instance \\ MLBridge, bridge) do
    config = config!(instance)

    case lookup(config, bridge) do
      nil -> {:error, not_configured(bridge, config)}
      entry -> {:ok, entry}
    end
  end

  @doc """
  Checks every bridge's `required_env` in this node's environment:
  `:ok`, or a `"FAILED_PRECONDITION"` error whose details map each bridge
  to the variables it misses.
  """
  @spec validate(instance()) :: :ok | {:error, Error.t()}
  def validate(instance \\ MLBridge) do
    case missing_env(instance) do
      missing when missing == %{} ->
        :ok

      missing ->
        text = Enum.map_join(missing, "; ", fn {bridge, vars} -> "#{bridge}: #{Enum.join(vars, ", ")}" end)
        {:error, Error.new("FAILED_PRECONDITION", "missing environment variables (#{text})", missing)}
    end
  end

  @doc "The bridges that miss some of their `required_env`, with what they miss."
  @spec missing_env(instance()) :: %{optional(String.t()) => [String.t()]}
  def missing_env(instance \\ MLBridge) do
    for entry <- bridges(instance),
        missing = Enum.reject(entry.required_env, &System.get_env/1),
        missing != [],
        into: %{},
        do: {Atom.to_string(entry.name), missing}
  end

  @doc false
  # The route of a request naming `bridge` (nil: the default bridge).
  @spec route(instance(), atom() | String.t() | nil) :: {:ok, route()} | {:error, Error.t()}
  def route(instance, bridge) do
    with {:ok, config} <- config(instance) do
      {entry, server_bridge} =
        case lookup(config, bridge || config.default) do
          nil -> {config.bridges[config.default], to_string(bridge)}
          entry -> {entry, entry.bridge}
        end

      with {:ok, transport} <- pick(instance, config, entry) do
        {:ok, %{bridge: server_bridge, transport: transport, timeout: config.timeout}}
      end
    end
  end

  @doc false
  # Every transport of the instance that is running.
  @spec transports(instance()) :: [{module(), pid()}]
  def transports(instance) do
    case config(instance) do
      {:ok, config} -> transports(instance, config)
      {:error, _} -> []
    end
  end

  defp transports(instance, config) do
    {module, _} = config.transport

    for {_name, entry} <- config.bridges,
        index <- 1..entry.pool_size,
        [{pid, _}] <- [Registry.lookup(name(instance), {entry.name, index})],
        do: {module, pid}
  end

  # Round-robin over the bridge's transports, skipping one being restarted.
  defp pick(instance, config, entry) do
    {:ok, counters} = Registry.meta(name(instance), :counters)
    {:ok, slots} = Registry.meta(name(instance), :slots)
    {module, _} = config.transport
    start = :atomics.add_get(counters, Map.fetch!(slots, entry.name), 1)

    Enum.find_value(0..(entry.pool_size - 1), {:error, no_transport(entry)}, fn offset ->
      case Registry.lookup(name(instance), {entry.name, rem(start + offset, entry.pool_size) + 1}) do
        [{pid, _}] -> {:ok, {module, pid}}
        [] -> nil
      end
    end)
  end

  defp lookup(config, bridge) when is_atom(bridge), do: config.bridges[bridge]

  defp lookup(config, bridge) when is_binary(bridge) do
    Enum.find_value(config.bridges, fn {name, entry} ->
      if Atom.to_string(name) == bridge, do: entry
    end)
  end

  defp config(instance) do
    case Registry.meta(name(instance), :config) do
      {:ok, config} -> {:ok, config}
      :error -> {:error, Error.new("UNAVAILABLE", "MLBridge instance #{inspect(instance)} is not running")}
    end
  rescue
    ArgumentError ->
      {:error, Error.new("UNAVAILABLE", "MLBridge instance #{inspect(instance)} is not running")}
  end

  defp config!(instance) do
    case config(instance) do
      {:ok, config} -> config
      {:error, error} -> raise error
    end
  end

  defp not_configured(bridge, config) do
    Error.new(
      "NOT_FOUND",
      "bridge #{inspect(bridge)} is not configured; configured: #{inspect(Map.keys(config.bridges))}"
    )
  end

  defp no_transport(entry) do
    Error.new(
      "UNAVAILABLE",
      "no transport of bridge #{inspect(entry.name)} is running (restarting); retry the call"
    )
  end
end
