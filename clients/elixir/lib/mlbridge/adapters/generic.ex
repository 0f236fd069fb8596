defmodule MLBridge.Adapters.Generic do
  @moduledoc """
  The adapter of a bridge without one of its own (`mock`, a plug-in bridge):
  its commands through `MLBridge.Adapter.command/4` (`MLBridge.Adapter.command(adapter, "echo", %{x: 1})`
  calls `mock:echo`), its operations listed by `MLBridge.Adapter.operations/1`,
  and its resources through the generic `create/4` and `execute/4`.
  """

  @behaviour MLBridge.Adapter

  @impl true
  def name, do: :generic

  @impl true
  def bridge, do: "mock"

  @impl true
  def capabilities, do: [:commands, :resources, :streaming]

  @impl true
  def create(adapter, type, config, opts), do: MLBridge.create_resource(adapter, type, config, opts)

  @impl true
  def execute(adapter, resource_id, inputs, opts),
    do: MLBridge.execute_resource(adapter, resource_id, inputs, opts)
end
