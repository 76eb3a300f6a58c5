defmodule Snakepit.Integration.FaultStartupTest do
  # Issue #6: workers whose adapter import fails.
  use ExUnit.Case, async: false

  import Snakepit.TestSupport
  import Snakepit.FaultSupport

  alias Snakepit.Error

  @moduletag :capture_log

  @fixtures Path.expand("../fixtures/python", __DIR__)

  # A pool of FlakyAdapter workers that fail to import while `flag` exists (`slots`: which
  # worker slots fail; nil = all).
  defp flaky_pool(flag, slots) do
    env = [{"PYTHONPATH", @fixtures}, {"SNAKEPIT_TEST_FAIL_FILE", flag}]
    env = if slots, do: [{"SNAKEPIT_TEST_FAIL_SLOTS", slots} | env], else: env

    %{
      name: :flaky,
      pool_size: 2,
      adapter_args: ["--adapter", "snakepit_flaky_adapter.FlakyAdapter"],
      adapter_env: env
    }
  end

  defp attempts(flag) do
    case File.read(flag <> ".attempts") do
      {:ok, text} ->
        for line <- String.split(text, "\n", trim: true) do
          [time, _worker] = String.split(line, " ")
          String.to_float(time)
        end

      {:error, _} ->
        []
    end
  end

  test "a worker that cannot import its adapter leaves the pool running degraded, retried with backoff" do
    flag = Path.join(tmp_dir!("snakepit-flaky"), "broken")
    File.write!(flag, "")

    assert :ok = try_start_snakepit([pools: [flaky_pool(flag, "2")]], 30_000)
    pool_pid = GenServer.whereis(Snakepit.Pool.via(:flaky))

    # Degraded: one worker serves, the other slot keeps failing.
    assert [worker] = Snakepit.list_workers()
    assert String.starts_with?(worker, "flaky_worker_1_")
    assert {:ok, "Hello, a!"} = Snakepit.execute("greet", %{name: "a"}, pool_name: :flaky)

    assert [t1, t2, t3 | _] =
             eventually(fn -> length(attempts(flag)) >= 3 && attempts(flag) end, 15_000)

    # Retries back off (500 ms, then 1 s, ... capped), they do not spin.
    assert t2 - t1 >= 0.45
    assert t3 - t2 >= 0.95
    assert t3 - t2 > t2 - t1

    # The adapter is fixed: the next retry brings the pool back to full size.
    File.rm!(flag)
    assert eventually(fn -> length(Snakepit.list_workers()) == 2 end, 15_000)
    assert GenServer.whereis(Snakepit.Pool.via(:flaky)) == pool_pid
    assert_pool_idle(:flaky, 2)
  end

  test "when every worker fails, await_ready and execute fail fast; the pool heals when fixed" do
    flag = Path.join(tmp_dir!("snakepit-flaky"), "broken")
    File.write!(flag, "")

    {ms, result} = timed(fn -> try_start_snakepit([pools: [flaky_pool(flag, nil)]], 30_000) end)

    assert {:error, %Error{category: :pool, message: "Pool failed to start workers"} = error} =
             result

    assert ms < 10_000
    assert error.python_traceback =~ "fails on purpose"
    assert error.details.worker_error.details.exit_status == 3

    {ms, result} = timed(fn -> Snakepit.execute("greet", %{name: "a"}, pool_name: :flaky) end)

    assert {:error, %Error{category: :pool, details: %{reason: :pool_not_initialized}}} = result
    assert ms < 100

    {ms, result} = timed(fn -> Snakepit.Pool.await_ready(:flaky, 30_000) end)
    assert {:error, %Error{message: "Pool failed to start workers"}} = result
    assert ms < 100

    File.rm!(flag)
    assert :ok = Snakepit.Pool.await_ready(:flaky, 30_000) |> retry_await()
    assert {:ok, "Hello, b!"} = Snakepit.execute("greet", %{name: "b"}, pool_name: :flaky)
    assert eventually(fn -> length(Snakepit.list_workers()) == 2 end, 15_000)
  end

  test "calls queued while the pool starts get :pool_not_initialized as soon as every worker fails" do
    configure_snakepit(
      pools: [
        %{name: :nope, pool_size: 2, adapter_args: ["--adapter", "nope.Nope"]}
      ]
    )

    {:ok, _} = Application.ensure_all_started(:snakepit)
    # The workers are still importing their adapter: these calls queue in the NIF.
    assert Snakepit.Pool.status(pool_config(:nope)) == :starting

    calls = [
      fn -> Snakepit.execute("ping", %{}, pool_name: :nope, timeout: 30_000) end,
      fn ->
        Snakepit.execute("ping", %{}, pool_name: :nope, session_id: "s", affinity: :strict_queue)
      end,
      fn ->
        Snakepit.execute_stream("count", %{}, fn _ -> :ok end, pool_name: :nope, timeout: 30_000)
      end
    ]

    results =
      calls
      |> Enum.map(fn call -> Task.async(fn -> timed(call) end) end)
      |> Task.await_many(30_000)

    for {ms, result} <- results do
      assert {:error, %Error{category: :pool, details: %{reason: :pool_not_initialized}}} = result

      assert ms < 3_000
    end

    assert Snakepit.Pool.status(pool_config(:nope)) == :init_failed
    stats = nif_stats(:nope)
    assert stats.no_workers_available == 3
    assert stats.queue_timeouts == 0
    assert stats.queued == 0

    # Calls made now are refused before the NIF, with the same error.
    assert {:error, %Error{category: :pool, details: %{reason: :pool_not_initialized}}} =
             Snakepit.execute("ping", %{}, pool_name: :nope)
  end

  defp pool_config(name) do
    {:ok, {_resource, config}} = Snakepit.Pool.lookup(name)
    config
  end

  # await_ready answers the start error at once while the pool is failed; poll until the
  # retries (every few seconds at most) bring up a worker.
  defp retry_await(:ok), do: :ok

  defp retry_await({:error, _}) do
    eventually(fn -> Snakepit.Pool.await_ready(:flaky, 100) == :ok end, 15_000)
    |> then(fn ready -> if ready, do: :ok, else: :not_ready end)
  end
end
