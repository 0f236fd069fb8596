defmodule MLBridge.Adapters.Custom do
  @moduledoc """
  The `custom` bridge: user Python run in the sandboxed worker, user
  resource types, and the worker's scratch files.

      {:ok, custom} = MLBridge.get_adapter(:custom)
      {:ok, %{"result" => 45}} = Custom.run(custom, "def main(inputs):\\n    return sum(range(inputs['n']))\\n", %{n: 10})

  `run/4`'s reply also carries `stdout`, `stderr` (and whether they were
  truncated) and `duration_ms`. A generator `main` streams its items with
  `stream_run/4`. Code sees `progress(step, total, message)`,
  `should_stop()`, `sleep(s)` and `WORKDIR` (the scratch space).
  """

  @behaviour MLBridge.Adapter

  alias MLBridge.{Adapter, Error}

  @impl true
  def name, do: :custom

  @impl true
  def bridge, do: "custom"

  @impl true
  def capabilities, do: [:run, :streaming, :user_types, :files, :cancel]

  @doc "Creates a resource: a `module` (`%{code: ...}`), or a type registered with `register_type/5`."
  @impl true
  def create(adapter, type, config, opts), do: MLBridge.create_resource(adapter, type, config, opts)

  @impl true
  def execute(adapter, resource_id, inputs, opts),
    do: MLBridge.execute_resource(adapter, resource_id, inputs, opts)

  @doc "Runs `code`'s `main(inputs)`; returns the reply (`\"result\"`, `\"stdout\"`, `\"stderr\"`, `\"duration_ms\"`, ...)."
  @spec run(Adapter.t(), String.t(), map(), [MLBridge.option()]) :: {:ok, map()} | {:error, Error.t()}
  def run(adapter, code, inputs \\ %{}, opts \\ []) when is_binary(code),
    do: Adapter.command(adapter, "run", %{"code" => code, "inputs" => inputs}, opts)

  @doc "Runs a generator `main`: its yielded items are `:chunk` events, its return value is the result's `\"result\"`."
  @spec stream_run(Adapter.t(), String.t(), map(), [MLBridge.option()]) :: MLBridge.Stream.t()
  def stream_run(adapter, code, inputs \\ %{}, opts \\ []) when is_binary(code),
    do:
      MLBridge.stream(
        adapter,
        {:command, Adapter.namespace(adapter) <> ":run"},
        %{"code" => code, "inputs" => inputs},
        opts
      )

  @doc """
  Defines resource type `type_name` from class `class` in `code` (with
  `create(self, config)` / `execute(self, inputs)`); then `create/4` makes resources of it.
  """
  @spec register_type(Adapter.t(), String.t(), String.t(), String.t(), [MLBridge.option()]) ::
          {:ok, map()} | {:error, Error.t()}
  def register_type(adapter, type_name, code, class, opts \\ []) do
    Adapter.command(adapter, "register_type", %{"name" => type_name, "code" => code, "class" => class}, opts)
  end

  @doc "Writes `files` (path => bytes) into the scratch space (`:dest`, `:overwrite`); returns what was written."
  @spec upload(Adapter.t(), %{optional(String.t()) => binary()}, keyword()) ::
          {:ok, map()} | {:error, Error.t()}
  def upload(adapter, files, opts \\ []) when is_map(files) do
    args = opts |> Keyword.take([:dest, :overwrite]) |> Map.new(fn {k, v} -> {Atom.to_string(k), v} end)
    Adapter.command(adapter, "upload", args, Keyword.put(opts, :attachments, files))
  end

  @doc "Reads scratch files: `{:ok, %{path => bytes}}`."
  @spec download(Adapter.t(), [String.t()], [MLBridge.option()]) ::
          {:ok, %{optional(String.t()) => binary()}} | {:error, Error.t()}
  def download(adapter, paths, opts \\ []) when is_list(paths) do
    with {:ok, reply} <-
           Adapter.command(adapter, "download", %{"paths" => paths}, Keyword.put(opts, :detailed, true)),
         do: {:ok, reply.attachments}
  end

  @doc "Lists the scratch space (`:path`, `:recursive`)."
  @spec list_files(Adapter.t(), keyword()) :: {:ok, map()} | {:error, Error.t()}
  def list_files(adapter, opts \\ []) do
    args = opts |> Keyword.take([:path, :recursive]) |> Map.new(fn {k, v} -> {Atom.to_string(k), v} end)
    Adapter.command(adapter, "list_files", args, opts)
  end
end
