import Config

# The library starts no bridges unless the application configures
# `config :mlbridge, :ml_bridges, ...` (docs/elixir.md). Tests start their
# own instances with MLBridge.start_link/1.
if config_env() == :test do
  config :logger, level: :warning
end
