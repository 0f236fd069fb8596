defmodule MLBridge.Adapters.Transformers do
  @moduledoc """
  The `transformers` bridge in transformers' words: models from the
  orchestrator's model store, tokenizers, pipelines, streamed generation,
  datasets and fine-tuning.

      {:ok, tf} = MLBridge.get_adapter(:transformers)
      {:ok, clf} = Transformers.pipeline(tf, "text-classification", model: "tiny-bert")
      {:ok, [%{"label" => _, "score" => _}]} = Transformers.run(tf, clf, "this movie was great")

      {:ok, gpt} = Transformers.load_model(tf, "tiny-gpt2")
      Transformers.generate(tf, gpt, "Once upon", max_new_tokens: 8)
      |> Enum.each(&IO.inspect/1)      # a chunk event per piece of text (`data["text"]`), then the result

  Resource configs and inputs: the orchestrator's docs/transformers.md.
  """

  @behaviour MLBridge.Adapter

  alias MLBridge.{Adapter, Error}

  @run_opts [:client, :timeout, :call_id, :attachments, :detailed]

  @impl true
  def name, do: :transformers

  @impl true
  def bridge, do: "transformers"

  @impl true
  def capabilities, do: [:models, :pipelines, :streaming, :datasets, :training]

  @impl true
  def create(adapter, type, config, opts), do: MLBridge.create_resource(adapter, type, config, opts)

  @impl true
  def execute(adapter, resource_id, inputs, opts),
    do: MLBridge.execute_resource(adapter, resource_id, inputs, opts)

  @doc "Loads a store model as a `model` resource (`:hash`, `:dtype`, `:device`, `:kind`, `:resource_id`)."
  @spec load_model(Adapter.t(), String.t(), keyword()) :: {:ok, String.t()} | {:error, Error.t()}
  def load_model(adapter, name, opts \\ []) when is_binary(name),
    do: create(adapter, "model", fields(%{"model" => name}, opts, [:hash, :dtype, :device, :kind]), opts)

  @doc "Loads the tokenizer saved with a store model (`:hash`, `:resource_id`)."
  @spec load_tokenizer(Adapter.t(), String.t(), keyword()) :: {:ok, String.t()} | {:error, Error.t()}
  def load_tokenizer(adapter, name, opts \\ []) when is_binary(name),
    do: create(adapter, "tokenizer", fields(%{"model" => name}, opts, [:hash]), opts)

  @doc """
  Creates a `pipeline` for `task`: `:model` (a store model's name),
  `:model_resource` (a loaded model's id, shared), `:tokenizer` (a
  tokenizer resource), `:batching` (`%{max_batch_size, max_batch_time_ms}`),
  `:parameters` (defaults of every call), `:hash`, `:dtype`, `:device`.
  """
  @spec pipeline(Adapter.t(), String.t(), keyword()) :: {:ok, String.t()} | {:error, Error.t()}
  def pipeline(adapter, task, opts \\ []) when is_binary(task) do
    config =
      fields(%{"task" => task}, opts, [
        :model,
        :model_resource,
        :batching,
        :parameters,
        :hash,
        :dtype,
        :device
      ])

    config = if t = opts[:tokenizer], do: Map.put(config, "tokenizer_resource", t), else: config
    create(adapter, "pipeline", config, opts)
  end

  @doc """
  Creates a `dataset` from `rows` (a list of maps) or from a file's bytes,
  `{:file, name, bytes}` (sent as an attachment; `:format` jsonl, csv, ...).
  Options: `:text_column`, `:label_column`, `:split`, `:max_rows`, `:format`, `:resource_id`.
  """
  @spec create_dataset(Adapter.t(), [map()] | {:file, String.t(), binary()}, keyword()) ::
          {:ok, String.t()} | {:error, Error.t()}
  def create_dataset(adapter, source, opts \\ []) do
    config = fields(%{}, opts, [:text_column, :label_column, :split, :max_rows, :format])

    case source do
      rows when is_list(rows) ->
        create(adapter, "dataset", Map.put(config, "rows", rows), opts)

      {:file, name, bytes} when is_binary(name) and is_binary(bytes) ->
        create(
          adapter,
          "dataset",
          Map.put(config, "attachment", name),
          Keyword.put(opts, :attachments, %{name => bytes})
        )
    end
  end

  @doc "Runs a pipeline (or model) on a text or a list of texts; its output. Other options are call parameters."
  @spec run(Adapter.t(), String.t(), String.t() | [String.t()], keyword()) ::
          {:ok, term()} | {:error, Error.t()}
  def run(adapter, resource_id, inputs, opts \\ []) do
    {run_opts, parameters} = Keyword.split(opts, @run_opts)
    args = %{"inputs" => inputs, "parameters" => Map.new(parameters)}

    with {:ok, %{"output" => output}} <- MLBridge.execute_resource(adapter, resource_id, args, run_opts),
         do: {:ok, output}
  end

  @doc """
  Generates from a text-generation pipeline or a causal-LM model, streaming:
  a chunk event per new piece of text (`data["text"]`), then the result
  (`%{"output", "text"}`). Other options are generation parameters
  (`max_new_tokens`, `do_sample`, ...); `:call_id` lets another process cancel it.
  """
  @spec generate(Adapter.t(), String.t(), String.t(), keyword()) :: MLBridge.Stream.t()
  def generate(adapter, resource_id, prompt, opts \\ []) when is_binary(prompt) do
    {run_opts, parameters} = Keyword.split(opts, @run_opts ++ [:tools])

    MLBridge.stream(
      adapter,
      {:resource, resource_id},
      %{"inputs" => prompt, "parameters" => Map.new(parameters)},
      run_opts
    )
  end

  @doc """
  Fine-tunes model resource `model` on dataset resource `dataset`: creates a
  `training_run` and returns its stream (a progress event per optimizer
  step, then the result naming the new `model_resource`). Options: `:args`
  (`max_steps`, ...), `:export` (a store name), `:tokenizer`, `:task`,
  `:max_length`, `:new_model`.
  """
  @spec train(Adapter.t(), String.t(), String.t(), keyword()) ::
          {:ok, MLBridge.Stream.t()} | {:error, Error.t()}
  def train(adapter, model, dataset, opts \\ []) do
    config =
      fields(%{"model_resource" => model, "dataset" => dataset}, opts, [
        :task,
        :args,
        :max_length,
        :max_checkpoint_bytes
      ])

    config = if t = opts[:tokenizer], do: Map.put(config, "tokenizer_resource", t), else: config

    config =
      if e = opts[:export],
        do: Map.put(config, "export", if(is_binary(e), do: %{"name" => e}, else: e)),
        else: config

    inputs = if m = opts[:new_model], do: %{"model_resource" => m}, else: %{}

    with {:ok, run} <- create(adapter, "training_run", config, Keyword.take(opts, [:client, :resource_id])),
         do: {:ok, MLBridge.stream(adapter, {:resource, run}, inputs, Keyword.take(opts, @run_opts))}
  end

  @doc "Deletes a resource (a model's memory is freed when nothing else holds it)."
  @spec delete(Adapter.t(), String.t()) :: {:ok, boolean()} | {:error, Error.t()}
  def delete(adapter, resource_id), do: MLBridge.delete_resource(adapter, resource_id)

  @doc "Resources by type, calls, generated tokens, memory and batching figures of this tenant's worker."
  @spec stats(Adapter.t()) :: {:ok, map()} | {:error, Error.t()}
  def stats(adapter), do: Adapter.command(adapter, "stats")

  @doc "What the worker can place models on: threads, CPU limit, GPUs, the models it may load."
  @spec devices(Adapter.t()) :: {:ok, map()} | {:error, Error.t()}
  def devices(adapter), do: Adapter.command(adapter, "devices")

  defp fields(config, opts, keys) do
    Enum.reduce(keys, config, fn key, config ->
      case Keyword.fetch(opts, key) do
        {:ok, value} when value != nil -> Map.put(config, Atom.to_string(key), value)
        _ -> config
      end
    end)
  end
end
