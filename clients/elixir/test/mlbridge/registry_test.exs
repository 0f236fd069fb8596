defmodule MLBridge.RegistryTest do
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog

  alias MLBridge.{Adapter, Config, Error, Registry}

  @unset "MLBRIDGE_TEST_SURELY_UNSET_VARIABLE"

  defp start_instance(name, bridges, opts \\ []) do
    start_supervised!(
      {MLBridge, [name: name, bridges: bridges, transport: MLBridge.Test.transport()] ++ opts}
    )
  end

  test "options are checked" do
    assert {:error, %Error{code: "INVALID_ARGUMENT", message: m1}} = Config.new(bridges: [])
    assert m1 =~ "at least one bridge"
    assert {:error, %Error{message: m2}} = Config.new(bridges: [mock: %{pool_size: 0}])
    assert m2 =~ "pool_size"
    assert {:error, %Error{message: m3}} = Config.new(bridges: [mock: %{pool: 2}])
    assert m3 =~ "unknown keys [:pool]"
    assert {:error, %Error{message: m4}} = Config.new(bridges: [mock: %{}], default: :dspy)
    assert m4 =~ "default bridge :dspy"
    assert {:error, %Error{message: m5}} = Config.new(bridges: [mock: %{required_env: "X"}])
    assert m5 =~ "required_env"
  end

  test "lists bridges with the default first and selects another default at runtime" do
    start_instance(:reg, [mock: %{}, custom: %{pool_size: 2, required_env: [@unset, "PATH"]}],
      default: :custom
    )

    assert [
             %{name: :custom, bridge: "custom", pool_size: 2, adapter: MLBridge.Adapters.Custom},
             %{name: :mock}
           ] = Registry.bridges(:reg)

    assert Registry.default(:reg) == :custom

    assert {:ok, %Adapter{module: MLBridge.Adapters.Custom, bridge: :custom}} =
             MLBridge.get_adapter(nil, client: :reg)

    assert :ok = Registry.set_default(:reg, :mock)
    assert Registry.default(:reg) == :mock

    assert {:ok, %Adapter{module: MLBridge.Adapters.Generic, bridge: :mock}} =
             MLBridge.get_adapter(nil, client: :reg)

    assert {:error, %Error{code: "NOT_FOUND"}} = Registry.set_default(:reg, :dspy)
    assert {:ok, %{bridge: "mock"}} = Registry.fetch(:reg, "mock")
    assert {:error, %Error{code: "NOT_FOUND"}} = Registry.fetch(:reg, :dspy)
    # 3 transports: custom's two and mock's one; the calls alternate over custom's.
    assert length(MLBridge.Registry.transports(:reg)) == 3
  end

  test "required_env is checked in this node's environment and reported" do
    log = capture_log(fn -> start_instance(:env, mock: %{required_env: [@unset, "PATH"]}, custom: %{}) end)
    assert log =~ "required environment variables not set: #{@unset}"
    assert Registry.missing_env(:env) == %{"mock" => [@unset]}

    assert {:error, %Error{code: "FAILED_PRECONDITION", details: %{"mock" => [@unset]}}} =
             Registry.validate(:env)

    assert {:ok, %{mock: mock, custom: custom}} = MLBridge.health(client: :env)
    assert %{served: true, missing_env: [@unset], default: true, workers_ready: ready} = mock
    assert ready > 0
    assert %{served: true, missing_env: [], default: false} = custom
  end

  test "a bridge entry may name the orchestrator's bridge and override the transport" do
    start_instance(:renamed, echo: %{bridge: "mock", transport: [concurrency: 4]})
    assert {:ok, %{"via" => "echo"}} = MLBridge.call(:echo, "mock:echo", %{via: "echo"}, client: :renamed)

    assert {:ok, %Adapter{bridge: :echo, description: %{"bridge" => "mock"}}} =
             MLBridge.get_adapter(:echo, client: :renamed)
  end

  test "a bridge the registry lacks gets its built-in adapter" do
    start_instance(:only_mock, mock: %{})

    assert {:ok, %Adapter{module: MLBridge.Adapters.LangChain}} =
             MLBridge.get_adapter(:langchain, client: :only_mock)
  end

  describe "application config" do
    setup do
      on_exit(fn ->
        Application.delete_env(:mlbridge, :ml_bridges)
        Application.delete_env(:dspex, :ml_bridges)
        Application.delete_env(:mlbridge, :transport)
      end)
    end

    test "config :mlbridge, :ml_bridges starts the application's instance" do
      Application.put_env(:mlbridge, :transport, MLBridge.Test.transport())

      Application.put_env(:mlbridge, :ml_bridges,
        name: MLBridge.AppInstance,
        default: :mock,
        bridges: [mock: %{}]
      )

      assert [
               name: MLBridge.AppInstance,
               default: :mock,
               bridges: _,
               transport: transport,
               timeout: :infinity
             ] = Config.from_app_env()

      assert transport[:address] == MLBridge.Test.address(:process)

      :ok = Application.stop(:mlbridge)
      on_exit(fn -> Application.ensure_all_started(:mlbridge) end)
      {:ok, _} = Application.ensure_all_started(:mlbridge)

      assert {:ok, %{"app" => true}} =
               MLBridge.call(:mock, "mock:echo", %{app: true}, client: MLBridge.AppInstance)

      :ok = Application.stop(:mlbridge)

      assert {:error, %Error{code: "UNAVAILABLE"}} =
               MLBridge.call(:mock, "mock:echo", %{}, client: MLBridge.AppInstance)
    end

    test "DSPex's config :dspex, :ml_bridges is accepted with a deprecation warning" do
      Application.put_env(:mlbridge, :transport, MLBridge.Test.transport())

      Application.put_env(:dspex, :ml_bridges,
        default: :dspy,
        bridges: [
          dspy: %{
            adapter: DSPex.Adapters.PythonPort,
            python_script: "priv/python/dspy_bridge.py",
            pool_size: 1
          },
          mock: %{pool_size: 1}
        ]
      )

      log =
        capture_log(fn ->
          opts = Config.from_app_env()
          start_supervised!({MLBridge, Keyword.put(opts, :name, :legacy)})
        end)

      assert log =~ "config :dspex, :ml_bridges is deprecated"
      assert log =~ "python_script is ignored"
      assert log =~ "DSPex.Adapters.PythonPort is not an MLBridge.Adapter"
      assert [%{name: :dspy, adapter: MLBridge.Adapters.DSPy} | _] = Registry.bridges(:legacy)
      assert {:ok, %{}} = MLBridge.call(:dspy, "common:ping", %{}, client: :legacy)
    end

    test "nothing is started without config" do
      assert Config.from_app_env() == nil
    end
  end
end
