defmodule MLBridge.Adapters.DSPy do
  @moduledoc """
  The `dspy` bridge in DSPy's words: LMs, signatures, programs, datasets and
  optimisation, over the resource API.

      {:ok, dspy} = MLBridge.get_adapter(:dspy)
      {:ok, _} = DSPy.configure_lm(dspy, %{provider: "dummy", answers: [%{answer: "4"}]})
      {:ok, qa} = DSPy.create_program(dspy, "question -> answer")
      {:ok, %{"answer" => "4"}} = DSPy.execute_program(dspy, qa, %{question: "2+2?"})

  This replaces DSPex's commands (`configure_lm`, `create_program`,
  `execute_program`, ...): see "Migrating from DSPex" in docs/elixir.md.
  """

  @behaviour MLBridge.Adapter

  alias MLBridge.{Adapter, Error}

  # The secret configure_lm(api_key: ...) stores a key under, unless told another.
  @key_secret "DSPY_API_KEY"

  @impl true
  def name, do: :dspy

  @impl true
  def bridge, do: "dspy"

  @impl true
  def capabilities, do: [:lms, :programs, :streaming, :datasets, :optimization]

  @impl true
  def create(adapter, type, config, opts), do: MLBridge.create_resource(adapter, type, config, opts)

  @impl true
  def execute(adapter, resource_id, inputs, opts),
    do: MLBridge.execute_resource(adapter, resource_id, inputs, opts)

  @doc """
  Gives this tenant's worker a secret (a provider key) that LM configs name
  in `api_key_secret`. The value travels as an attachment and lives only in
  the worker's memory; keys belong in the tenant's secrets (policy file).
  """
  @spec set_secret(Adapter.t(), String.t(), String.t()) :: :ok | {:error, Error.t()}
  def set_secret(adapter, name, value) when is_binary(name) and is_binary(value) do
    with {:ok, _} <-
           Adapter.command(adapter, "set_secret", %{"name" => name}, attachments: %{"value" => value}),
         do: :ok
  end

  @doc "Creates an `lm` resource (`model`, `provider`, `temperature`, `api_key_secret`, ...; `provider: \"dummy\"` with `answers` offline)."
  @spec create_lm(Adapter.t(), map(), [MLBridge.option()]) :: {:ok, String.t()} | {:error, Error.t()}
  def create_lm(adapter, config, opts \\ []), do: MLBridge.create_resource(adapter, "lm", config, opts)

  @doc """
  Sets the worker's default LM, from a config (as `create_lm/3`'s) or from
  an lm resource (`%{lm: id}`). An `api_key` in the config is handed to the
  worker with `set_secret/3` (under `api_key_secret`, default
  `"DSPY_API_KEY"`), never stored. Returns `%{"default_lm" => summary}`.
  """
  @spec configure_lm(Adapter.t(), map()) :: {:ok, map()} | {:error, Error.t()}
  def configure_lm(adapter, config) when is_map(config) do
    config = Map.new(config, fn {k, v} -> {to_string(k), v} end)

    case Map.pop(config, "api_key") do
      {nil, config} ->
        Adapter.command(adapter, "configure_lm", config)

      {key, config} ->
        secret = Map.get(config, "api_key_secret", @key_secret)

        with :ok <- set_secret(adapter, secret, key),
             do: Adapter.command(adapter, "configure_lm", Map.put(config, "api_key_secret", secret))
    end
  end

  @doc "Creates a `signature` from `\"a, b -> c\"` or `%{inputs: [...], outputs: [...]}` (`:instructions`, `:resource_id`)."
  @spec create_signature(Adapter.t(), String.t() | map(), keyword()) ::
          {:ok, String.t()} | {:error, Error.t()}
  def create_signature(adapter, signature, opts \\ []) do
    config = if is_binary(signature), do: %{"signature" => signature}, else: signature
    config = if text = opts[:instructions], do: Map.put(config, "instructions", text), else: config
    MLBridge.create_resource(adapter, "signature", config, opts)
  end

  @doc """
  Creates a `program`: `signature` is a signature resource id, `"a -> b"`
  or `%{inputs, outputs}`; `:module` (`"Predict"`, `"ChainOfThought"`),
  `:lm` (an lm resource id), `:state`, `:resource_id`.
  """
  @spec create_program(Adapter.t(), String.t() | map(), keyword()) :: {:ok, String.t()} | {:error, Error.t()}
  def create_program(adapter, signature, opts \\ []) do
    config =
      Enum.reduce(
        [lm: "lm", state: "state"],
        %{"signature" => signature, "module" => opts[:module] || "Predict"},
        fn
          {key, field}, config -> if v = opts[key], do: Map.put(config, field, v), else: config
        end
      )

    MLBridge.create_resource(adapter, "program", config, opts)
  end

  @doc "Runs a program on its input fields; returns its output fields."
  @spec execute_program(Adapter.t(), String.t(), map(), [MLBridge.option()]) ::
          {:ok, map()} | {:error, Error.t()}
  def execute_program(adapter, program_id, inputs, opts \\ []),
    do: MLBridge.execute_resource(adapter, program_id, inputs, opts)

  @doc "Runs a program streaming: token chunks, then a result event with the outputs."
  @spec stream_program(Adapter.t(), String.t(), map(), [MLBridge.option()]) :: MLBridge.Stream.t()
  def stream_program(adapter, program_id, inputs, opts \\ []),
    do: MLBridge.stream(adapter, {:resource, program_id}, inputs, opts)

  @doc "This tenant's programs on the bridge (`resource_id`, `info` with the signature and module)."
  @spec programs(Adapter.t()) :: {:ok, [map()]} | {:error, Error.t()}
  def programs(adapter), do: MLBridge.list_resources(adapter, "program")

  @doc "Creates a `dataset` of examples; `inputs` names their input fields."
  @spec create_dataset(Adapter.t(), [map()], [String.t()], [MLBridge.option()]) ::
          {:ok, String.t()} | {:error, Error.t()}
  def create_dataset(adapter, examples, inputs, opts \\ []),
    do: MLBridge.create_resource(adapter, "dataset", %{"examples" => examples, "inputs" => inputs}, opts)

  @doc """
  Compiles `program_id` on `trainset` (a dataset id): creates an
  `optimization` and returns its stream: progress events, then the result,
  which names the new program (`"program_id"`, `"metric"`, `"info"`).
  Options: `:optimizer` (default `"BootstrapFewShot"`), `:metric` (default
  `"exact_match"`), `:optimizer_args`, `:new_program_id`.
  """
  @spec optimize(Adapter.t(), String.t(), String.t(), keyword()) ::
          {:ok, MLBridge.Stream.t()} | {:error, Error.t()}
  def optimize(adapter, program_id, trainset, opts \\ []) do
    config = %{
      "program" => program_id,
      "trainset" => trainset,
      "optimizer" => opts[:optimizer] || "BootstrapFewShot",
      "metric" => opts[:metric] || "exact_match",
      "optimizer_args" => opts[:optimizer_args] || %{}
    }

    inputs = if id = opts[:new_program_id], do: %{"program_id" => id}, else: %{}

    with {:ok, optimization} <-
           MLBridge.create_resource(adapter, "optimization", config, Keyword.take(opts, [:client])),
         do:
           {:ok,
            MLBridge.stream(adapter, {:resource, optimization}, inputs, Keyword.drop(opts, [:new_program_id]))}
  end

  @doc "Default LM, resources by type, executions and optimisations of this tenant's worker."
  @spec stats(Adapter.t()) :: {:ok, map()} | {:error, Error.t()}
  def stats(adapter), do: Adapter.command(adapter, "stats")
end
