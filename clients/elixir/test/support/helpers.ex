defmodule MLBridge.Test do
  @moduledoc "Helpers of the tests: the orchestrators test_helper.exs started, and a wait strategy."

  @doc "The address of the orchestrator of `backend` (`:process` or `:docker`) that test_helper.exs started."
  @spec address(:process | :docker) :: String.t()
  def address(backend), do: :persistent_term.get({__MODULE__, backend})

  @doc false
  @spec put_address(:process | :docker, String.t()) :: :ok
  def put_address(backend, address), do: :persistent_term.put({__MODULE__, backend}, address)

  @doc "Transport options for the orchestrator of `backend`."
  @spec transport(:process | :docker) :: keyword()
  def transport(backend \\ :process),
    do: [address: address(backend), executable: MLBridge.Test.Orchestrator.executable!()]

  @doc """
  Calls `fun` every `interval` ms until it returns a truthy value (returned)
  or `timeout` ms pass (then raises with the last value).
  """
  @spec wait_until((() -> term()), pos_integer(), pos_integer()) :: term()
  def wait_until(fun, timeout \\ 30_000, interval \\ 100) do
    deadline = System.monotonic_time(:millisecond) + timeout
    poll(fun, deadline, interval)
  end

  defp poll(fun, deadline, interval) do
    case fun.() do
      falsy when falsy in [nil, false] ->
        if System.monotonic_time(:millisecond) > deadline do
          raise "condition not met in time"
        else
          Process.sleep(interval)
          poll(fun, deadline, interval)
        end

      value ->
        value
    end
  end
end
