# Starts real orchestrators for the run: `mlbridge serve --backend process`
# always, and `--backend docker` for the tests tagged :docker (they run in CI,
# CI=true, where a missing engine is an error; locally they are skipped when
# no engine answers). Then the shared client instance `MLBridge`, once every
# bridge has a ready worker.

alias MLBridge.Test.Orchestrator

ExUnit.start(capture_log: true)

exe = Orchestrator.executable!()
ci? = System.get_env("CI") == "true"

run! = fn args ->
  case System.cmd(exe, args, stderr_to_stdout: true) do
    {_, 0} -> :ok
    {out, status} -> raise "mlbridge #{Enum.join(args, " ")} failed (#{status}):\n#{out}"
  end
end

# A tiny GPT-2 (random weights, built offline) in the process orchestrator's model store.
add_models = fn state_dir ->
  model_dir = Path.join(Mix.Project.build_path(), "mlbridge-test-models/tiny-gpt2")
  unless File.exists?(Path.join(model_dir, "config.json")), do: run!.(["models", "tiny", "gpt2", model_dir])
  run!.(["models", "add", model_dir, "--name", "tiny-gpt2", "--state-dir", state_dir])
end

process_bridges = """
  mock: {runtime: mock, pool_size: 1, held: 0}
  custom: {runtime: custom, pool_size: 1, held: 0}
  dspy: {runtime: dspy, pool_size: 1, held: 0, env: {LITELLM_LOCAL_MODEL_COST_MAP: "true"}}
  langchain: {runtime: langchain, pool_size: 1, held: 0}
  transformers: {runtime: transformers, pool_size: 1, held: 0, models: true}
"""

{:ok, process} =
  Orchestrator.start_link(backend: "process", default: "mock", bridges: process_bridges, setup: add_models)

MLBridge.Test.put_address(:process, Orchestrator.address(process))

docker_excluded? = :docker in Keyword.get(ExUnit.configuration(), :exclude, [])

docker_engine? =
  System.find_executable("docker") != nil and
    match?({_, 0}, System.cmd("docker", ["info"], stderr_to_stdout: true))

docker =
  cond do
    docker_excluded? ->
      nil

    docker_engine? ->
      {:ok, docker} =
        Orchestrator.start_link(
          backend: "docker",
          default: "custom",
          bridges: "  custom: {runtime: custom, pool_size: 1, held: 0}\n"
        )

      MLBridge.Test.put_address(:docker, Orchestrator.address(docker))
      docker

    ci? ->
      raise "CI=true but no Docker engine answers `docker info`: the :docker tests must run in CI"

    true ->
      IO.puts("no Docker engine answers `docker info`: skipping the :docker tests")
      ExUnit.configure(exclude: [:docker])
      nil
  end

ready? = fn client, names ->
  case MLBridge.list_bridges(client: client) do
    {:ok, rows} ->
      Enum.all?(names, fn name -> Enum.any?(rows, &(&1["name"] == name and &1["workers_ready"] > 0)) end)

    {:error, _} ->
      false
  end
end

# A probe instance waits for the orchestrator: a port started before the
# orchestrator listens keeps a gRPC channel in reconnect backoff for a while,
# so the instances the tests use start once it answers.
wait_ready! = fn server, transport, names ->
  {:ok, probe} =
    MLBridge.start_link(name: MLBridge.Probe, bridges: [probe: %{bridge: "mock"}], transport: transport)

  try do
    MLBridge.Test.wait_until(fn -> ready?.(MLBridge.Probe, names) end, 240_000, 250)
  rescue
    error ->
      IO.puts(Orchestrator.log(server))
      reraise error, __STACKTRACE__
  after
    Supervisor.stop(probe)
  end
end

wait_ready!.(process, MLBridge.Test.transport(:process), ~w(mock custom dspy langchain transformers))

{:ok, _} =
  MLBridge.start_link(
    name: MLBridge,
    default: :mock,
    bridges: [mock: %{pool_size: 2}, custom: %{}, dspy: %{}, langchain: %{}, transformers: %{}],
    transport: MLBridge.Test.transport(:process)
  )

if docker do
  wait_ready!.(docker, MLBridge.Test.transport(:docker), ["custom"])

  {:ok, _} =
    MLBridge.start_link(
      name: MLBridge.Docker,
      bridges: [custom: %{}],
      transport: MLBridge.Test.transport(:docker)
    )
end

ExUnit.after_suite(fn _ ->
  for server <- [docker, process], server != nil, do: Orchestrator.stop(server)
end)
