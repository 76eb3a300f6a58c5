defmodule Snakepit.Integration.FaultCallersTest do
  # Issue #6: callers that die (or give up) while queued or in flight.
  use ExUnit.Case, async: false

  import Snakepit.TestSupport
  import Snakepit.FaultSupport

  @moduletag :capture_log

  test "dead callers' queued requests never run, their running call ends, the worker serves on" do
    start_snakepit!(pools: [fault_pool(:callers, %{pool_size: 1})])
    dir = tmp_dir!("snakepit-callers")
    paths = for name <- ~w(running queued1 queued2), into: %{}, do: {name, Path.join(dir, name)}

    caller = fn path, ms ->
      spawn(fn -> Snakepit.execute("mark", %{path: path, ms: ms}, pool_name: :callers) end)
    end

    running = caller.(paths["running"], 700)
    assert eventually(fn -> nif_stats(:callers).in_flight == 1 end)
    queued = [caller.(paths["queued1"], 0), caller.(paths["queued2"], 0)]
    assert eventually(fn -> nif_stats(:callers).queued == 2 end)

    for pid <- [running | queued], do: Process.exit(pid, :kill)

    # Queued requests are dropped at once; the running one is abandoned, not interrupted.
    assert eventually(fn ->
             match?(%{queued: 0, monitored_callers: 0}, nif_stats(:callers))
           end)

    assert nif_stats(:callers).in_flight == 1
    assert {:ok, _pid} = Snakepit.execute("pid", %{}, pool_name: :callers, timeout: 5_000)
    assert File.exists?(paths["running"])
    refute File.exists?(paths["queued1"])
    refute File.exists?(paths["queued2"])
    assert_pool_idle(:callers, 1)
  end

  test "after a storm of dying and timing-out callers the pool is all idle with an empty queue" do
    start_snakepit!(
      pool_queue_timeout: 30_000,
      pools: [fault_pool(:callers, %{pool_size: 2})]
    )

    test = self()

    callers =
      for i <- 1..120 do
        kind = Enum.at([:dies_in_flight, :dies_queued, :times_out, :normal], rem(i, 4))
        ms = 10 + :rand.uniform(60)

        pid =
          spawn(fn ->
            result =
              case kind do
                :times_out ->
                  Snakepit.execute("sleep_ms", %{ms: ms}, pool_name: :callers, timeout: ms)

                _ ->
                  Snakepit.execute("sleep_ms", %{ms: ms}, pool_name: :callers, timeout: 60_000)
              end

            send(test, {:reply, self(), result})
          end)

        {pid, kind}
      end

    # Kill the dying callers at random moments while the storm runs.
    for {pid, kind} <- Enum.shuffle(callers), kind in [:dies_in_flight, :dies_queued] do
      if kind == :dies_in_flight, do: Process.sleep(:rand.uniform(15))
      Process.exit(pid, :kill)
    end

    survivors = for {pid, kind} <- callers, kind in [:times_out, :normal], do: {pid, kind}

    for {pid, kind} <- survivors do
      assert_receive {:reply, ^pid, result}, 30_000

      case kind do
        :normal -> assert {:ok, %{"slept_ms" => _}} = result
        :times_out -> assert match?({:ok, _}, result) or match?({:error, _}, result)
      end
    end

    assert_pool_idle(:callers, 2)
    assert {:ok, _} = Snakepit.execute("pid", %{}, pool_name: :callers)
  end
end
