defmodule MLBridge.Instance do
  @moduledoc false
  # The supervisor of one MLBridge instance: its registry of bridges, then
  # `pool_size` transports per bridge. rest_for_one: transports register in
  # the registry, so they restart with it.

  use Supervisor

  require Logger

  alias MLBridge.{Config, Registry}

  @spec start_link(Config.t()) :: Supervisor.on_start()
  def start_link(config), do: Supervisor.start_link(__MODULE__, config, name: config.name)

  @impl true
  def init(config) do
    {module, base} = config.transport

    transports =
      for {name, entry} <- Enum.sort(config.bridges), index <- 1..entry.pool_size do
        opts =
          base |> Keyword.merge(entry.transport) |> Keyword.put(:name, Registry.via(config.name, name, index))

        Supervisor.child_spec({module, opts}, id: {:transport, name, index})
      end

    for {name, entry} <- config.bridges,
        missing = Enum.reject(entry.required_env, &System.get_env/1),
        missing != [] do
      Logger.warning(
        "bridge #{inspect(name)}: required environment variables not set: #{Enum.join(missing, ", ")}"
      )
    end

    Supervisor.init([Registry.child_spec(config) | transports], strategy: :rest_for_one)
  end
end
