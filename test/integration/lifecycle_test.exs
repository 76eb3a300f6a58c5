defmodule Snakepit.Integration.LifecycleTest do
  # Worker start, crash, restart and shutdown with real Python processes.
  use ExUnit.Case, async: false

  import Snakepit.TestSupport

  alias Snakepit.Error

  @contract %{
    name: :contract,
    pool_size: 2,
    adapter_args: ["--adapter", "snakepit_test_adapters.ContractAdapter"],
    adapter_env: [{"PYTHONPATH", Path.expand("../fixtures/python", __DIR__)}]
  }

  @broken %{
    name: :broken,
    pool_size: 2,
    adapter_args: ["--adapter", "snakepit_broken_adapter.BrokenImportAdapter"],
    adapter_env: [{"PYTHONPATH", Path.expand("../fixtures/python", __DIR__)}]
  }

  test "stopping the application leaves no Python process behind" do
    start_snakepit!(pools: [@contract])
    python_pids = Snakepit.Worker.os_pids()
    assert length(python_pids) == 2
    assert Enum.all?(python_pids, &os_alive?/1)

    # A child of a worker (same process group) must go too.
    assert {:ok, child} = Snakepit.execute("spawn_child", %{}, pool_name: :contract)
    assert os_alive?(child)

    test_pid = self()
    handler = {__MODULE__, make_ref()}

    Snakepit.Telemetry.attach(
      handler,
      [:snakepit, :pool, :worker, :terminated],
      fn _, _, meta, _ -> send(test_pid, {:terminated, meta.worker_id, meta.planned}) end,
      nil
    )

    on_exit(fn -> Snakepit.Telemetry.detach(handler) end)
    worker_ids = Snakepit.list_workers()

    :ok = Application.stop(:snakepit)

    for id <- worker_ids, do: assert_received({:terminated, ^id, true})

    for pid <- [child | python_pids] do
      refute os_alive?(pid), "OS process #{pid} survived the application stop"
    end

    assert worker_os_pids() == []
  end

  @tag :capture_log
  test "a worker whose Python process dies is replaced by a worker with a new id" do
    start_snakepit!(pools: [%{@contract | pool_size: 1}])
    [old_id] = Snakepit.list_workers()
    old_os_pid = Snakepit.Worker.os_pid(old_id)

    assert {:error, %Error{category: category} = error} =
             Snakepit.execute("crash", %{code: 7}, pool_name: :contract)

    assert category in [:worker, :pool], inspect(error)

    new_ids =
      eventually(
        fn ->
          case Snakepit.list_workers() do
            [id] when id != old_id -> [id]
            _ -> nil
          end
        end,
        15_000
      )

    assert [new_id] = new_ids
    assert String.starts_with?(new_id, "contract_worker_1_")
    refute os_alive?(old_os_pid)
    assert {:ok, pid} = Snakepit.execute("pid", %{}, pool_name: :contract)
    assert pid != old_os_pid
  end

  @tag :capture_log
  test "repeated crashes are restarted (with backoff), each time under a new id" do
    start_snakepit!(pools: [%{@contract | pool_size: 1}])

    ids =
      for _ <- 1..3, reduce: Snakepit.list_workers() do
        [current | _] = seen ->
          {:error, _} = Snakepit.execute("crash", %{code: 3}, pool_name: :contract)

          [next] =
            eventually(
              fn ->
                case Snakepit.list_workers() do
                  [id] when id != current -> [id]
                  _ -> nil
                end
              end,
              15_000
            )

          [next | seen]
      end

    assert length(Enum.uniq(ids)) == 4
    assert {:ok, _} = Snakepit.execute("pid", %{}, pool_name: :contract)
    assert length(Snakepit.Worker.os_pids()) == 1
  end

  @tag :capture_log
  test "in-flight callers of a crashing worker get a worker exit error" do
    start_snakepit!(pools: [%{@contract | pool_size: 1}])
    [worker_id] = Snakepit.list_workers()
    os_pid = Snakepit.Worker.os_pid(worker_id)

    task = Task.async(fn -> Snakepit.execute("sleep_ms", %{ms: 10_000}, pool_name: :contract) end)
    Process.sleep(300)
    Snakepit.OsProcess.kill(os_pid, "KILL")

    assert {:error, %Error{} = error} = Task.await(task, 15_000)

    assert error.category == :worker or
             error.details[:reason] in [:unavailable, :cancelled, :internal, :unknown],
           inspect(error)
  end

  @tag :capture_log
  test "a pool whose workers all fail to start reports the Python traceback quickly" do
    started = System.monotonic_time(:millisecond)
    result = try_start_snakepit([pools: [@broken]], 30_000)
    elapsed = System.monotonic_time(:millisecond) - started

    assert {:error, %Error{category: :pool, message: "Pool failed to start workers"} = error} =
             result

    assert elapsed < 15_000
    assert error.python_traceback =~ "broken on purpose"
    assert error.details.pool == :broken

    assert {:error, %Error{category: :pool, details: %{reason: :pool_not_initialized}}} =
             Snakepit.execute("ping", %{}, pool_name: :broken)

    assert worker_os_pids() == []
  end

  @tag :capture_log
  test "a broken pool does not stop the others" do
    result = try_start_snakepit([pools: [@contract, @broken]], 30_000)
    assert {:error, %Error{details: %{pool: :broken}}} = result
    assert :ok = Snakepit.Pool.await_ready(:contract, 30_000)
    assert {:ok, "Hello, x!"} = Snakepit.execute("greet", %{name: "x"}, pool_name: :contract)
  end

  test "Snakepit.cleanup/0 with nothing running is :ok" do
    assert :ok = Snakepit.cleanup()
  end
end
