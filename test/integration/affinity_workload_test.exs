defmodule Snakepit.Integration.AffinityWorkloadTest do
  # Issue #3, workload: 4 real Python workers, 64 sessions x 20 calls, 32 concurrent callers.
  # Every call returns the OS pid of the worker it ran on. Under :strict_queue and
  # :strict_fail_fast no call may run on a worker other than its session's first one; :hint
  # may move sessions under load, and only reports how often it did.
  use ExUnit.Case, async: false

  import Snakepit.TestSupport
  import Snakepit.FaultSupport

  alias Snakepit.{Error, Native}
  alias Snakepit.Bridge.SessionStore

  @moduletag :capture_log

  @workers 4
  @sessions 64
  @calls 20
  @concurrency 32
  # Python work per call (ms): short, but enough to make callers contend for workers.
  @work_ms 2
  # :strict_fail_fast retries on :worker_busy after this many ms.
  @backoff_ms 1
  @max_attempts 10_000

  @pools [w_hint: :hint, w_queue: :strict_queue, w_fail_fast: :strict_fail_fast]

  setup_all do
    pools =
      for {name, affinity} <- @pools do
        %{
          name: name,
          pool_size: @workers,
          worker_profile: :process,
          affinity: affinity,
          adapter_args: fixture_adapter("AffinityAdapter"),
          adapter_env: fixture_env()
        }
      end

    start_snakepit!(pools: pools)
    await_workers!(@workers * length(@pools))
  end

  setup do
    for {name, _} <- @pools, do: assert_pool_idle(name, @workers)
    :ok
  end

  test ":strict_queue: 0 of 1280 calls leave their session's worker" do
    report = run_workload(:w_queue)

    assert report.failures == [], "failed calls: #{inspect(Enum.take(report.failures, 5))}"
    assert report.off_worker == 0, "calls off their session's worker: #{report.off_worker}"
    assert report.retries == 0
    assert_home_workers(report)

    # The queue did hold calls back (the workload contended), and nothing was refused.
    assert report.stats.queued_total > 0
    assert report.stats.worker_busy == 0
    assert report.stats.session_worker_unavailable == 0
  end

  test ":strict_fail_fast: retried :worker_busy calls, 0 calls leave their session's worker" do
    report = run_workload(:w_fail_fast)

    assert report.failures == [], "failed calls: #{inspect(Enum.take(report.failures, 5))}"
    assert report.off_worker == 0, "calls off their session's worker: #{report.off_worker}"
    assert_home_workers(report)

    # The workload contended (calls were refused busy), and every :worker_busy the scheduler
    # issued was seen and retried by a caller.
    assert report.retries > 0
    assert report.retries == report.stats.worker_busy
    assert report.stats.session_worker_unavailable == 0
  end

  test ":hint: every call succeeds; calls off the session's first worker are reported" do
    report = run_workload(:w_hint)

    assert report.failures == [], "failed calls: #{inspect(Enum.take(report.failures, 5))}"
    assert report.off_worker >= 0
    assert report.retries == 0
    assert report.stats.worker_busy == 0
    assert report.stats.session_worker_unavailable == 0
  end

  # -- workload ----------------------------------------------------------------------------------

  # Runs the workload on `pool`: @concurrency caller processes, each owning
  # @sessions / @concurrency sessions and alternating between them, so every session's calls
  # run in order while all sessions are active at once. Returns a report (also printed).
  defp run_workload(pool) do
    tag = "#{pool}-#{System.unique_integer([:positive])}"
    sessions = for i <- 1..@sessions, do: "#{tag}-s#{i}"
    on_exit(fn -> Enum.each(sessions, &SessionStore.delete_session/1) end)

    worker_pids = Map.new(Snakepit.list_workers(pool), &{python_pid(&1), &1})
    assert map_size(worker_pids) == @workers
    before = nif_stats(pool)
    retries = :counters.new(1, [:atomics])

    callers =
      for group <- Enum.chunk_every(sessions, div(@sessions, @concurrency)) do
        Task.async(fn ->
          # Start together, so the first calls of all sessions contend.
          receive do
            :go -> :ok
          end

          for n <- 1..@calls, session <- group do
            {session, n, call_with_retry(pool, session, retries)}
          end
        end)
      end

    started = System.monotonic_time(:millisecond)
    Enum.each(callers, &send(&1.pid, :go))
    results = callers |> Task.await_many(120_000) |> List.flatten()
    elapsed = System.monotonic_time(:millisecond) - started

    assert length(results) == @sessions * @calls

    failures =
      for {session, n, result} <- results, not match?({:ok, _}, result), do: {session, n, result}

    # Each session's pids in call order (the callers keep it).
    pids_by_session =
      results
      |> Enum.filter(&match?({_, _, {:ok, _}}, &1))
      |> Enum.group_by(fn {session, _, _} -> session end, fn {_, n, {:ok, pid}} -> {n, pid} end)
      |> Map.new(fn {session, calls} ->
        {session, calls |> Enum.sort() |> Enum.map(&elem(&1, 1))}
      end)

    homes = Map.new(pids_by_session, fn {session, [home | _]} -> {session, home} end)

    off_worker =
      Enum.sum(
        for {session, pids} <- pids_by_session do
          Enum.count(pids, &(&1 != homes[session]))
        end
      )

    moves =
      Enum.sum(
        for {_session, pids} <- pids_by_session do
          pids |> Enum.chunk_every(2, 1, :discard) |> Enum.count(fn [a, b] -> a != b end)
        end
      )

    # Every pid is one of the pool's workers (none was replaced meanwhile).
    all_pids = pids_by_session |> Map.values() |> List.flatten() |> Enum.uniq()

    assert Enum.all?(all_pids, &Map.has_key?(worker_pids, &1)),
           "unknown pids #{inspect(all_pids)}"

    assert Map.new(Snakepit.list_workers(pool), &{python_pid(&1), &1}) == worker_pids

    after_ = nif_stats(pool)

    stats =
      Map.new(
        [:queued_total, :worker_busy, :session_worker_unavailable, :queue_timeouts],
        &{&1, Map.fetch!(after_, &1) - Map.fetch!(before, &1)}
      )

    report = %{
      pool: pool,
      failures: failures,
      off_worker: off_worker,
      moves: moves,
      retries: :counters.get(retries, 1),
      homes: homes,
      worker_pids: worker_pids,
      sessions: sessions,
      stats: stats,
      elapsed_ms: elapsed
    }

    IO.puts(
      "\n[affinity workload] pool=#{pool} affinity=#{@pools[pool]} " <>
        "sessions=#{@sessions} calls/session=#{@calls} concurrency=#{@concurrency} " <>
        "workers=#{@workers}: off_worker=#{off_worker} moves=#{moves} " <>
        "worker_busy_retries=#{report.retries} queued=#{stats.queued_total} " <>
        "failures=#{length(failures)} sessions_per_worker=#{inspect(sessions_per_worker(homes))} " <>
        "elapsed=#{elapsed}ms"
    )

    report
  end

  # One call; :worker_busy is retried after a short backoff (counted in `retries`).
  defp call_with_retry(pool, session, retries, attempt \\ 1) do
    case Snakepit.execute("pid_after", %{ms: @work_ms},
           pool_name: pool,
           session_id: session,
           timeout: 60_000
         ) do
      {:error, %Error{category: :pool, details: %{reason: :worker_busy}}}
      when attempt < @max_attempts ->
        :counters.add(retries, 1, 1)
        Process.sleep(@backoff_ms)
        call_with_retry(pool, session, retries, attempt + 1)

      result ->
        result
    end
  end

  # The strict modes kept every session on its first worker, which is also the worker the
  # scheduler has it bound to; and the sessions were spread over several workers (else "no
  # call left its worker" would say nothing).
  defp assert_home_workers(report) do
    resource = resource(report.pool)

    for session <- report.sessions do
      bound = Native.pool_session_worker(resource, session)
      assert report.worker_pids[report.homes[session]] == bound, "#{session} bound to #{bound}"
    end

    spread = sessions_per_worker(report.homes)
    assert map_size(spread) >= 2, "all sessions on one worker: #{inspect(spread)}"
  end

  defp sessions_per_worker(homes), do: homes |> Map.values() |> Enum.frequencies()
end
