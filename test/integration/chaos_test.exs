defmodule Snakepit.Integration.ChaosTest do
  # Issue #6: 20 000 requests from 200 callers while workers are SIGKILLed at random and 5 % of
  # the callers die. Invariants: no caller hangs, every surviving caller gets exactly one reply
  # per request, strict sessions never run on another worker, the pool ends full and idle.
  use ExUnit.Case, async: false

  import Snakepit.TestSupport
  import Snakepit.FaultSupport

  alias Snakepit.{Error, OsProcess}

  @moduletag :capture_log

  @pool_size 4
  @callers 200
  @requests 100
  @dying 10
  @call_timeout 10_000
  @kill_every_ms 400

  @tag :chaos
  @tag timeout: 180_000
  test "20 000 requests, random worker kills, dying callers" do
    start_snakepit!(pools: [fault_pool(:chaos, %{pool_size: @pool_size})])
    test = self()

    callers =
      for i <- 1..@callers do
        kind = caller_kind(i)
        pid = spawn(fn -> run_caller(test, i, kind) end)
        {pid, kind}
      end

    killer = spawn_link(fn -> kill_workers(test, 0) end)

    doomed = callers |> Enum.map(&elem(&1, 0)) |> Enum.take_random(@dying)

    for pid <- doomed do
      Process.sleep(:rand.uniform(300))
      Process.exit(pid, :kill)
    end

    survivors = for {pid, kind} <- callers, pid not in doomed, do: {pid, kind}
    reports = for {pid, _kind} <- survivors, do: await_report(pid)

    send(killer, :stop)
    assert_receive {:killer_done, kills}, 5_000

    for report <- reports do
      # Exactly one reply per request, and nothing arrived afterwards.
      assert report.replies == @requests, inspect(report)
      assert report.stray == [], "late or duplicate messages: #{inspect(report.stray)}"
      # No call waited (much) beyond its own timeout.
      assert report.max_ms < @call_timeout + 1_000, inspect(report)
      assert report.bad == [], "unexpected results: #{inspect(report.bad)}"

      # A strict session ran on one Python process only (its first one), never elsewhere.
      if report.kind == :strict, do: assert(length(Enum.uniq(report.pids)) <= 1, inspect(report))
    end

    ok = reports |> Enum.map(&length(&1.pids)) |> Enum.sum()
    assert ok > div(@callers * @requests, 2), "only #{ok} successful calls"
    assert kills >= 3, "the killer only killed #{kills} workers"

    assert_pool_idle(:chaos, @pool_size, 30_000)
    assert {:ok, _} = Snakepit.execute("pid", %{}, pool_name: :chaos)
  end

  # 10 % strict sessions, 15 % hint sessions (idempotent: retried after a crash), the rest
  # session-less.
  defp caller_kind(i) when rem(i, 10) == 0, do: :strict
  defp caller_kind(i) when rem(i, 20) in [1, 7, 13], do: :hint
  defp caller_kind(_), do: :plain

  defp caller_opts(i, :strict),
    do: [session_id: "strict-#{i}", affinity: :strict_queue]

  defp caller_opts(i, :hint), do: [session_id: "hint-#{i}", idempotent: true]
  defp caller_opts(_i, :plain), do: []

  defp run_caller(test, i, kind) do
    opts = [pool_name: :chaos, timeout: @call_timeout] ++ caller_opts(i, kind)

    acc =
      Enum.reduce(1..@requests, %{pids: [], bad: [], max_ms: 0, replies: 0}, fn _, acc ->
        {ms, result} = timed(fn -> Snakepit.execute("pid", %{}, opts) end)
        acc = %{acc | replies: acc.replies + 1, max_ms: max(acc.max_ms, ms)}

        case result do
          {:ok, pid} when is_integer(pid) -> %{acc | pids: [pid | acc.pids]}
          {:error, %Error{}} -> acc
          other -> %{acc | bad: [other | acc.bad]}
        end
      end)

    # Any reply that arrives after its call returned would land here.
    Process.sleep(200)
    {:messages, stray} = Process.info(self(), :messages)
    send(test, {:report, self(), Map.merge(acc, %{kind: kind, stray: stray})})
  end

  defp await_report(pid) do
    receive do
      {:report, ^pid, report} -> report
    after
      # Every call is bounded by @call_timeout; a caller still running this long has hung.
      @requests * 1_000 -> flunk("caller #{inspect(pid)} hung")
    end
  end

  # SIGKILLs a random ready worker every @kill_every_ms, keeping at least one other worker up.
  defp kill_workers(test, kills) do
    receive do
      :stop -> send(test, {:killer_done, kills})
    after
      @kill_every_ms ->
        case Snakepit.list_workers() do
          [_, _ | _] = workers ->
            workers |> Enum.random() |> python_pid() |> kill()
            kill_workers(test, kills + 1)

          _ ->
            kill_workers(test, kills)
        end
    end
  end

  defp kill(nil), do: :ok
  defp kill(os_pid), do: OsProcess.kill(os_pid, "KILL")
end
