defmodule Snakepit.Integration.FaultTimeoutTest do
  # Issue #6: caller timeouts cancel the call, the worker stays busy until Python really
  # finishes, and a worker whose abandoned call overruns the grace is recycled.
  use ExUnit.Case, async: false

  import Snakepit.TestSupport
  import Snakepit.FaultSupport

  alias Snakepit.{Error, OsProcess}

  @moduletag :capture_log

  test "the worker stays busy until Python finishes an abandoned call; no second call overlaps" do
    start_snakepit!(pools: [fault_pool(:slow, %{pool_size: 1})])
    [worker] = Snakepit.list_workers()
    os_pid = python_pid(worker)

    {ms, result} =
      timed(fn -> Snakepit.execute("sleep_ms", %{ms: 1_000}, pool_name: :slow, timeout: 100) end)

    assert {:error, %Error{category: :timeout}} = result
    assert ms < 300

    # The gRPC call was cancelled for the caller, but Python is still sleeping: the worker is
    # busy, and the next call waits for it instead of running concurrently.
    assert %{busy: 1, in_flight: 1} = nif_stats(:slow)
    {ms, result} = timed(fn -> Snakepit.execute("pid", %{}, pool_name: :slow) end)
    assert {:ok, ^os_pid} = result
    assert ms >= 600, "served after #{ms} ms, while the abandoned call was still running"

    # 1 s is within the default grace (5 s): the worker was not recycled.
    assert Snakepit.list_workers() == [worker]
    assert_pool_idle(:slow, 1)
  end

  test "a worker whose abandoned call overruns abandon_grace_ms is recycled" do
    capture_telemetry([[:snakepit, :worker, :recycled]])
    start_snakepit!(pools: [fault_pool(:slow, %{pool_size: 1, abandon_grace_ms: 300})])
    [worker] = Snakepit.list_workers()
    os_pid = python_pid(worker)

    # A child in its own session must not outlive the recycled worker either.
    assert {:ok, child} = Snakepit.execute("spawn_child", %{setsid: true}, pool_name: :slow)

    assert {:error, %Error{category: :timeout}} =
             Snakepit.execute("hang", %{}, pool_name: :slow, timeout: 100)

    # Queued behind the stuck call: served by a new worker shortly after the grace.
    next =
      Task.async(fn ->
        timed(fn -> Snakepit.execute("pid", %{}, pool_name: :slow, timeout: 10_000) end)
      end)

    assert_receive {:telemetry, [:snakepit, :worker, :recycled], %{count: 1},
                    %{worker_id: ^worker, reason: :abandon_grace_exceeded}},
                   2_000

    # The stuck Python is killed at once (no graceful stop: it is known not to finish).
    {kill_ms, gone} = timed(fn -> OsProcess.await_exit(os_pid, 5_000) end)
    assert gone
    assert kill_ms < 300, "the recycled worker's Python took #{kill_ms} ms to go"

    {ms, result} = Task.await(next, 10_000)
    assert {:ok, new_pid} = result
    assert new_pid != os_pid
    assert ms < 3_000, "capacity came back only after #{ms} ms"

    refute OsProcess.alive?(child)
    assert_pool_idle(:slow, 1)
    assert nif_stats(:slow).recycles == 1
  end

  test "by default a stuck abandoned call is recycled after 5 s, not queued behind forever" do
    start_snakepit!(pool_queue_timeout: 30_000, pools: [fault_pool(:slow, %{pool_size: 1})])
    [worker] = Snakepit.list_workers()

    assert {:error, %Error{category: :timeout}} =
             Snakepit.execute("sleep_ms", %{ms: 60_000}, pool_name: :slow, timeout: 100)

    {ms, result} =
      timed(fn -> Snakepit.execute("pid", %{}, pool_name: :slow, timeout: 30_000) end)

    assert {:ok, _} = result
    assert ms in 4_000..8_000, "served after #{ms} ms"
    refute Snakepit.list_workers() == [worker]
  end
end
