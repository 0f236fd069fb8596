defmodule MLBridge.Application do
  @moduledoc false
  # Starts the instance (named MLBridge unless the config names it) when the application is configured
  # (config :mlbridge, :ml_bridges, or DSPex's config :dspex, :ml_bridges).

  use Application

  @impl true
  def start(_type, _args) do
    children =
      case MLBridge.Config.from_app_env() do
        nil -> []
        opts -> [{MLBridge, Keyword.put_new(opts, :name, MLBridge)}]
      end

    Supervisor.start_link(children, strategy: :one_for_one, name: MLBridge.Application.Supervisor)
  end
end
