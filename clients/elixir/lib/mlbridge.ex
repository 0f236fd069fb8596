defmodule MLBridge do
  @moduledoc """
  The Elixir client of mlbridge: ML frameworks (DSPy, LangChain,
  transformers, user Python) served by a sandboxed orchestrator, used from
  Elixir through one API.

      {:ok, id} = MLBridge.create_resource(:mock, "counter", %{start: 1})
      {:ok, %{"value" => 3}} = MLBridge.execute_resource(:mock, id, %{add: 2})
      {:ok, %{"x" => 1}} = MLBridge.call(:mock, "mock:echo", %{x: 1})

      MLBridge.stream(:mock, "mock:stream", %{n: 3})
      |> Enum.map(& &1.kind)
      #=> [:progress, :chunk, :progress, :chunk, :progress, :chunk, :result]

      {:ok, adapter} = MLBridge.get_adapter(:langchain)
      {:ok, chain} = MLBridge.Adapters.LangChain.create_chain(adapter, %{...})

  Requests go through an instance (`start_link/1`; the application starts
  one named `MLBridge` from `config :mlbridge, :ml_bridges`): its registry
  of bridges (`MLBridge.Registry`) and their transports, `mlbridge port
  --protocol mux` child processes by default (`MLBridge.Transport.Port`).

  Every function answers `{:ok, result}` or `{:error, %MLBridge.Error{}}`.
  A `bridge` is a registry name (`:dspy`), the orchestrator's name of a bridge
  (`"mock"`), or an adapter from `get_adapter/2`.

  ## Options

  Functions taking `opts` accept:

  - `:client`: the instance (default `MLBridge`; an adapter carries its own).
  - `:timeout`: milliseconds or `:infinity` (default: the instance's
    `:timeout`, `:infinity`): sent as the call's deadline, and how long the
    client waits (plus 5 s for the orchestrator to answer first; then the
    call is cancelled and the error is `"DEADLINE_EXCEEDED"`).
  - `:call_id`: the gRPC call id to run under, to `cancel/2` it from elsewhere.
  - `:attachments`: a map (or list) of name => binary, sent as raw bytes.
  - `:tools`: client tools, name => one-argument function (see `MLBridge.Stream`);
    a unary call given tools runs as a stream so they can be answered.
  - `:detailed`: `true` returns a `MLBridge.Reply` (result, the reply's
    attachments, metadata, call id) instead of the result alone.
  """

  alias MLBridge.{Adapter, Config, Error, Event, Registry, Reply, Request}

  @typedoc "A bridge: a registry name, the orchestrator's name, or an adapter."
  @type bridge :: atom() | String.t() | Adapter.t()

  @type option ::
          {:client, Registry.instance()}
          | {:timeout, timeout()}
          | {:call_id, String.t()}
          | {:attachments, %{optional(String.t() | atom()) => binary()} | [{String.t() | atom(), binary()}]}
          | {:tools, %{optional(String.t()) => MLBridge.Stream.tool()}}
          | {:detailed, boolean()}
          | {:resource_id, String.t()}

  @type result(value) :: {:ok, value} | {:ok, Reply.t()} | {:error, Error.t()}

  # -- instances -------------------------------------------------------------------------------

  @doc """
  Starts an instance: its registry of bridges and their transports.

  Options: `:name` (default `MLBridge`), `:bridges` (name => entry, see
  `MLBridge.Config`), `:default` (a bridge name; default the first listed),
  `:transport` (options of `MLBridge.Transport.Port`, or `{module, opts}`
  for another `MLBridge.Transport`), `:timeout` (default of every call).

      MLBridge.start_link(
        name: MyApp.ML,
        bridges: [mock: %{pool_size: 2}, dspy: %{required_env: ["GEMINI_API_KEY"]}],
        transport: [address: "127.0.0.1:50051"]
      )
  """
  @spec start_link(keyword()) :: Supervisor.on_start()
  def start_link(opts) do
    case Config.new(opts) do
      {:ok, config} -> MLBridge.Instance.start_link(config)
      {:error, error} -> {:error, error}
    end
  end

  @doc "A child spec for `start_link/1`, to start an instance under your supervisor."
  @spec child_spec(keyword()) :: Supervisor.child_spec()
  def child_spec(opts) do
    %{id: Keyword.get(opts, :name, MLBridge), start: {__MODULE__, :start_link, [opts]}, type: :supervisor}
  end

  # -- the orchestrator ----------------------------------------------------------------------------

  @doc "The orchestrator's bridges: name, framework, image, pool size, workers ready, default, backend."
  @spec list_bridges([option()]) :: result([map()])
  def list_bridges(opts \\ []), do: run(nil, %{"op" => "list_bridges"}, opts)

  @doc "A bridge's commands (with JSON schemas), resource types and versions."
  @spec describe(bridge(), [option()]) :: result(map())
  def describe(bridge, opts \\ []), do: run(bridge, %{"op" => "describe", "bridge" => nil}, opts)

  @doc "The orchestrator's stats (workers, totals, per-bridge health, usage); `:usage_tenant`, `:usage_since` (Unix s)."
  @spec stats(keyword()) :: result(map())
  def stats(opts \\ []) do
    op =
      Enum.reduce([usage_tenant: "usage_tenant", usage_since: "usage_since"], %{"op" => "stats"}, fn {key,
                                                                                                      field},
                                                                                                     op ->
        if value = opts[key], do: Map.put(op, field, value), else: op
      end)

    run(nil, op, opts)
  end

  # -- resources ---------------------------------------------------------------------------------

  @doc """
  Creates a resource of one of the bridge's types; returns its id.

  `:resource_id` chooses the id (else the orchestrator makes one);
  `:attachments` go with the config (a dataset file, say).
  """
  @spec create_resource(bridge(), String.t(), map(), [option()]) :: result(String.t())
  def create_resource(bridge, type, config \\ %{}, opts \\ []) when is_binary(type) do
    op =
      put_opt(
        %{"op" => "create_resource", "bridge" => nil, "type" => type, "config" => config},
        opts,
        :resource_id
      )

    case run(bridge, op, opts) do
      {:ok, %Reply{result: %{"resource_id" => id}} = reply} -> {:ok, %{reply | result: id}}
      {:ok, %{"resource_id" => id}} -> {:ok, id}
      other -> other
    end
  end

  @doc """
  Runs a resource on `inputs`; returns its result. `bridge` picks the
  transport (the orchestrator knows the resource's bridge).
  """
  @spec execute_resource(bridge(), String.t(), term(), [option()]) :: result(term())
  def execute_resource(bridge, resource_id, inputs \\ %{}, opts \\ []) when is_binary(resource_id) do
    op =
      put_opt(%{"op" => "execute_resource", "resource_id" => resource_id, "inputs" => inputs}, opts, :call_id)

    run_or_stream(bridge, op, opts)
  end

  @doc "The caller's resources, of `bridge` (nil: every bridge) and `type` (nil: every type)."
  @spec list_resources(bridge() | nil, String.t() | nil, [option()]) :: result([map()])
  def list_resources(bridge \\ nil, type \\ nil, opts \\ []) do
    op = %{"op" => "list_resources"}
    op = if bridge, do: Map.put(op, "bridge", nil), else: op
    op = if type, do: Map.put(op, "type", type), else: op
    run(bridge, op, opts)
  end

  @doc "Deletes a resource: `{:ok, true}`; a resource that does not exist (or is another tenant's) is `\"NOT_FOUND\"`."
  @spec delete_resource(bridge(), String.t(), [option()]) :: result(boolean())
  def delete_resource(bridge, resource_id, opts \\ []) when is_binary(resource_id) do
    case run(bridge, %{"op" => "delete_resource", "resource_id" => resource_id}, opts) do
      {:ok, %{"deleted" => deleted}} -> {:ok, deleted}
      other -> other
    end
  end

  # -- commands and streams ------------------------------------------------------------------------

  @doc """
  Calls a command (`"namespace:operation"`, or a legacy DSPex command) of
  the bridge with `args`; returns its result.
  """
  @spec call(bridge(), String.t(), map(), [option()]) :: result(term())
  def call(bridge, command, args \\ %{}, opts \\ []) when is_binary(command) do
    op = put_opt(%{"op" => "call", "bridge" => nil, "command" => command, "args" => args}, opts, :call_id)
    run_or_stream(bridge, op, opts)
  end

  @doc """
  A streaming call: a lazy `MLBridge.Stream` of `MLBridge.Event`s (chunk,
  progress, request, then result or error).

  `target` is a command (`"mock:stream"`, or `{:command, name}`) run with
  `inputs` as its args, or a resource id (`"ticker-1"`, or `{:resource, id}`:
  needed for ids with a `:`) run on `inputs`. A bare string with a `:` is a
  command.

      MLBridge.stream(:mock, "mock:stream", %{n: 3}, call_id: "job-1")
      |> Enum.each(fn event -> IO.inspect({event.kind, event.data}) end)
  """
  @spec stream(bridge(), String.t() | {:command, String.t()} | {:resource, String.t()}, term(), [option()]) ::
          MLBridge.Stream.t()
  def stream(bridge, target, inputs \\ %{}, opts \\ []) do
    call_id = Keyword.get_lazy(opts, :call_id, &new_call_id/0)

    op =
      case stream_target(target) do
        {:command, command} -> %{"bridge" => nil, "command" => command, "args" => inputs}
        {:resource, id} -> %{"resource_id" => id, "inputs" => inputs}
      end

    {instance, name} = resolve(bridge, opts)

    %MLBridge.Stream{
      instance: instance,
      bridge: name,
      op: Map.merge(op, %{"op" => "stream", "call_id" => call_id}),
      call_id: call_id,
      opts: opts
    }
  end

  defp stream_target({kind, name} = target) when kind in [:command, :resource] and is_binary(name), do: target

  defp stream_target(name) when is_binary(name),
    do: if(name =~ ":", do: {:command, name}, else: {:resource, name})

  @doc """
  Cancels a running call: by its call id (from any process; the call may
  have been made anywhere by the same tenant), or by its `MLBridge.Stream`.
  `{:ok, true}` when the orchestrator found the call running.
  """
  @spec cancel(String.t() | MLBridge.Stream.t(), [option()]) :: result(boolean())
  def cancel(call, opts \\ [])

  def cancel(%MLBridge.Stream{instance: instance, call_id: call_id}, opts),
    do: cancel(call_id, Keyword.put(opts, :client, instance))

  def cancel(call_id, opts) when is_binary(call_id) do
    instance = Keyword.get(opts, :client, MLBridge)
    op = %{"op" => "cancel", "call_id" => call_id}

    # The transport carrying the call, when it is this node's, else any.
    result =
      case Enum.find(Registry.transports(instance), fn {module, pid} -> module.in_flight?(pid, call_id) end) do
        nil -> Request.run(instance, nil, op, opts)
        transport -> Request.run_on(transport, op, opts)
      end

    case result do
      {:ok, %{"found" => found}} -> {:ok, found}
      other -> other
    end
  end

  @doc """
  Answers a `:request` event of a stream the caller is consuming: `{:ok,
  result}` (any JSON term) or `{:error, message}`. The stream goes on.
  """
  @spec answer(Event.t(), {:ok, term()} | {:error, String.t()}) :: :ok | {:error, Error.t()}
  def answer(%Event{} = event, reply), do: MLBridge.Stream.answer(event, reply)

  # -- adapters and health -----------------------------------------------------------------------

  @doc """
  The adapter of a bridge (default: the registry's default bridge), after
  checking with the orchestrator that it serves the bridge (`describe/2`).

      {:ok, adapter} = MLBridge.get_adapter(:langchain)
      {:ok, chain} = MLBridge.Adapters.LangChain.create_chain(adapter, %{...})
  """
  @spec get_adapter(atom() | String.t() | nil, [option()]) :: {:ok, Adapter.t()} | {:error, Error.t()}
  def get_adapter(bridge \\ nil, opts \\ []) do
    instance = Keyword.get(opts, :client, MLBridge)

    with {:ok, name} <- default_name(instance, bridge) do
      module =
        case Registry.fetch(instance, name) do
          {:ok, entry} -> entry.adapter
          {:error, _} -> Config.builtin_adapter(to_string(name))
        end

      with {:ok, description} <- describe(name, client: instance) do
        {:ok, %Adapter{module: module, instance: instance, bridge: name, description: description}}
      end
    end
  end

  defp default_name(instance, nil) do
    {:ok, Registry.default(instance)}
  rescue
    error in Error -> {:error, error}
  end

  defp default_name(_instance, name), do: {:ok, name}

  @doc """
  Health of every configured bridge: the environment variables it misses
  (`required_env`), whether the orchestrator serves it, with how many
  workers ready.
  """
  @spec health([option()]) :: {:ok, %{atom() => map()}} | {:error, Error.t()}
  def health(opts \\ []) do
    instance = Keyword.get(opts, :client, MLBridge)

    with {:ok, served} <- list_bridges(opts) do
      served = Map.new(served, &{&1["name"], &1})
      missing = Registry.missing_env(instance)
      default = Registry.default(instance)

      {:ok,
       Map.new(Registry.bridges(instance), fn entry ->
         row = served[entry.bridge]

         {entry.name,
          %{
            bridge: entry.bridge,
            default: entry.name == default,
            missing_env: Map.get(missing, Atom.to_string(entry.name), []),
            served: row != nil,
            workers_ready: if(row, do: row["workers_ready"], else: 0)
          }}
       end)}
    end
  end

  # -- internals -------------------------------------------------------------------------------

  defp run_or_stream(bridge, op, opts) do
    if Keyword.get(opts, :tools) do
      op = op |> Map.put("op", "stream") |> Map.put_new_lazy("call_id", &new_call_id/0)
      {instance, name} = resolve(bridge, opts)
      stream = %MLBridge.Stream{instance: instance, bridge: name, op: op, call_id: op["call_id"], opts: opts}

      case {MLBridge.Stream.final(stream), Keyword.get(opts, :detailed, false)} do
        {{:ok, event}, true} ->
          {:ok,
           %Reply{
             result: event.data,
             call_id: event.call_id,
             attachments: event.attachments,
             metadata: event.metadata
           }}

        {{:ok, event}, false} ->
          {:ok, event.data}

        {error, _} ->
          error
      end
    else
      run(bridge, op, opts)
    end
  end

  defp run(bridge, op, opts) do
    {instance, name} = resolve(bridge, opts)
    Request.run(instance, name, op, opts)
  end

  defp resolve(%Adapter{instance: instance, bridge: bridge}, _opts), do: {instance, bridge}

  defp resolve(bridge, opts) when is_atom(bridge) or is_binary(bridge),
    do: {Keyword.get(opts, :client, MLBridge), bridge}

  defp put_opt(op, opts, key) do
    case Keyword.fetch(opts, key) do
      {:ok, value} -> Map.put(op, Atom.to_string(key), value)
      :error -> op
    end
  end

  defp new_call_id, do: Base.encode16(:crypto.strong_rand_bytes(12), case: :lower)
end
