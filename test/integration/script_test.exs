defmodule Snakepit.Integration.ScriptTest do
  # Snakepit.run_as_script/2 and Snakepit.cleanup/0 with real workers.
  use ExUnit.Case, async: false

  import Snakepit.TestSupport

  alias Snakepit.Error

  @contract %{
    name: :contract,
    pool_size: 1,
    adapter_args: ["--adapter", "snakepit_test_adapters.ContractAdapter"],
    adapter_env: [{"PYTHONPATH", Path.expand("../fixtures/python", __DIR__)}]
  }

  test "starts, awaits the pools, runs the function and stops what it started" do
    configure_snakepit(pools: [@contract])
    refute Process.whereis(Snakepit.Supervisor)

    assert {{:ok, "Hello, script!"}, [os_pid]} =
             Snakepit.run_as_script(fn ->
               {Snakepit.execute("greet", %{name: "script"}, pool_name: :contract),
                Snakepit.Worker.os_pids()}
             end)

    refute Process.whereis(Snakepit.Supervisor)
    refute os_alive?(os_pid)
    assert worker_os_pids() == []
  end

  test "pools not ready in time give :pool_initialization_timeout and leave nothing behind" do
    configure_snakepit(pools: [@contract])

    assert {:error, :pool_initialization_timeout} =
             Snakepit.run_as_script(fn -> flunk("must not run") end, timeout: 1)

    refute Process.whereis(Snakepit.Supervisor)
    assert eventually(fn -> worker_os_pids() == [] end)
  end

  @tag :capture_log
  test "a pool that fails to start returns its error instead of crashing" do
    broken = %{
      @contract
      | name: :broken,
        adapter_args: ["--adapter", "snakepit_broken_adapter.BrokenImportAdapter"]
    }

    configure_snakepit(pools: [broken])

    assert {:error, %Error{category: :pool, message: "Pool failed to start workers"}} =
             Snakepit.run_as_script(fn -> flunk("must not run") end, timeout: 30_000)

    refute Process.whereis(Snakepit.Supervisor)
  end

  test "a raising function is re-raised after the shutdown" do
    configure_snakepit(pools: [@contract])

    assert_raise ArgumentError, "from the script", fn ->
      Snakepit.run_as_script(fn -> raise ArgumentError, "from the script" end)
    end

    refute Process.whereis(Snakepit.Supervisor)
    assert eventually(fn -> worker_os_pids() == [] end)
  end

  test "stop_mode: :always stops a running application; restart: true starts it again" do
    start_snakepit!(pools: [@contract])
    [old_worker] = Snakepit.list_workers()

    assert :done = Snakepit.run_as_script(fn -> :done end, stop_mode: :always, restart: true)

    assert Process.whereis(Snakepit.Supervisor)
    assert :ok = Snakepit.Pool.await_ready(Snakepit.Pool, 30_000)
    assert [new_worker] = Snakepit.list_workers()
    assert new_worker != old_worker

    assert {:ok, "Hello, again!"} =
             Snakepit.execute("greet", %{name: "again"}, pool_name: :contract)
  end

  @tag :capture_log
  test "cleanup/0 kills the Python processes of this run" do
    start_snakepit!(pools: [%{@contract | pool_size: 2}])
    os_pids = Snakepit.Worker.os_pids()
    assert length(os_pids) == 2

    assert :ok = Snakepit.cleanup()
    for pid <- os_pids, do: refute(os_alive?(pid))
  end
end
