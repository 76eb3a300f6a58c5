defmodule Snakepit.Integration.FaultShutdownTest do
  # Issue #6: graceful stop of the application with calls in flight.
  use ExUnit.Case, async: false

  import Snakepit.TestSupport
  import Snakepit.FaultSupport

  alias Snakepit.{Error, OsProcess}

  @moduletag :capture_log

  defp call_async(tool, args) do
    Task.async(fn -> Snakepit.execute(tool, args, pool_name: :stopping, timeout: 30_000) end)
  end

  test "Application.stop lets running calls finish, rejects new ones at once, then stops workers" do
    start_snakepit!(
      graceful_shutdown_timeout_ms: 5_000,
      pools: [fault_pool(:stopping, %{pool_size: 2})]
    )

    python_pids = Snakepit.Worker.os_pids()
    running = for _ <- 1..2, do: call_async("sleep_ms", %{ms: 1_500})
    assert eventually(fn -> nif_stats(:stopping).in_flight == 2 end)
    queued = call_async("pid", %{})
    assert eventually(fn -> nif_stats(:stopping).queued == 1 end)

    {stop_ms, stopper} =
      {System.monotonic_time(:millisecond), Task.async(fn -> Application.stop(:snakepit) end)}

    # Queued and new calls are refused at once with a clear error.
    assert {:error, %Error{category: :pool, message: "Pool is closed"}} = Task.await(queued)

    {ms, result} = timed(fn -> Snakepit.execute("pid", %{}, pool_name: :stopping) end)
    assert {:error, %Error{category: :pool, message: "Pool is closed"}} = result
    assert ms < 100

    # The running calls deliver their results.
    for task <- running, do: assert({:ok, %{"slept_ms" => 1_500}} = Task.await(task, 10_000))

    assert :ok = Task.await(stopper, 15_000)
    assert System.monotonic_time(:millisecond) - stop_ms >= 1_000
    assert Enum.all?(python_pids, &(not OsProcess.alive?(&1)))
  end

  test "a call still running after the shutdown grace gets an error; the stop does not hang" do
    start_snakepit!(
      graceful_shutdown_timeout_ms: 500,
      pools: [fault_pool(:stopping, %{pool_size: 1})]
    )

    [worker] = Snakepit.list_workers()
    os_pid = python_pid(worker)
    running = call_async("hang", %{})
    assert eventually(fn -> nif_stats(:stopping).in_flight == 1 end)

    {ms, :ok} = timed(fn -> Application.stop(:snakepit) end)
    assert ms < 5_000

    assert {:error,
            %Error{category: :worker, details: %{reason: :worker_exit, worker_id: ^worker}}} =
             Task.await(running, 1_000)

    refute OsProcess.alive?(os_pid)
  end

  test "the shutdown grace is one for all pools, not one per pool" do
    start_snakepit!(
      graceful_shutdown_timeout_ms: 1_000,
      pools: [fault_pool(:stop_a, %{pool_size: 1}), fault_pool(:stop_b, %{pool_size: 1})]
    )

    calls =
      for pool <- [:stop_a, :stop_b] do
        Task.async(fn -> Snakepit.execute("hang", %{}, pool_name: pool, timeout: 30_000) end)
      end

    assert eventually(fn ->
             nif_stats(:stop_a).in_flight == 1 and nif_stats(:stop_b).in_flight == 1
           end)

    # Both pools wait out the same 1 s (one pool after the other would take 2 s and more).
    {ms, :ok} = timed(fn -> Application.stop(:snakepit) end)
    assert ms >= 900 and ms < 1_800, "stop took #{ms} ms"

    for task <- calls, do: assert({:error, %Error{category: :worker}} = Task.await(task, 1_000))
  end
end
