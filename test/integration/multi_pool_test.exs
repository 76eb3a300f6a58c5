defmodule Snakepit.Integration.MultiPoolTest do
  # Three pools with different affinity modes side by side (real ContractAdapter workers),
  # pool selection options, per-pool and aggregate statistics (including the error count).
  use ExUnit.Case, async: false

  import Snakepit.TestSupport

  alias Snakepit.Error

  @modes [hint: :hint, queue: :strict_queue, fail_fast: :strict_fail_fast]
  @upstream_keys [
    :requests,
    :queued,
    :errors,
    :queue_timeouts,
    :pool_saturated,
    :workers,
    :available,
    :busy
  ]

  setup_all do
    pools =
      for {name, affinity} <- @modes do
        %{
          name: name,
          pool_size: 2,
          affinity: affinity,
          adapter_args: fixture_adapter("StreamAdapter"),
          adapter_env: fixture_env()
        }
      end

    start_snakepit!(pools: pools)
    await_workers!(6)
  end

  setup do
    assert eventually(fn -> Enum.all?(Keyword.keys(@modes), &(stats(&1).busy == 0)) end)
    :ok
  end

  test "each pool applies its own affinity mode, to calls and streams, while the others run" do
    scenarios =
      for {name, _} <- @modes do
        Task.async(fn -> {name, busy_session_worker(name)} end)
      end

    results = Map.new(Task.await_many(scenarios, 10_000))

    # :hint - the session's worker is busy, so the other worker serves at once.
    %{pinned: pinned, call: {call, call_ms}, stream: {stream, stream_ms}} = results.hint
    assert {:ok, other} = call
    assert other != pinned
    assert {:ok, [^other]} = stream
    assert call_ms < 400 and stream_ms < 400, "hint waited #{call_ms}/#{stream_ms} ms"

    # :strict_queue - both wait for the session's worker although the other one is idle.
    %{pinned: pinned, call: {call, call_ms}, stream: {stream, stream_ms}} = results.queue
    assert {:ok, ^pinned} = call
    assert {:ok, [^pinned]} = stream
    assert call_ms >= 300 and stream_ms >= 300, "strict_queue waited #{call_ms}/#{stream_ms} ms"

    # :strict_fail_fast - both rejected at once.
    %{call: {call, call_ms}, stream: {stream, stream_ms}} = results.fail_fast

    for result <- [call, stream] do
      assert {:error,
              %Error{category: :pool, details: %{reason: :worker_busy, pool_name: :fail_fast}}} =
               result
    end

    assert call_ms < 300 and stream_ms < 300
  end

  test "pool_name: and pool: select a pool; unknown pools are :pool_not_found" do
    for {name, _} <- @modes do
      {:ok, pid} = Snakepit.execute("pid", %{}, pool_name: name)
      assert pid in os_pids(name)
      {:ok, pid} = Snakepit.execute("pid", %{}, pool_name: Atom.to_string(name))
      assert pid in os_pids(name)
      {:ok, pid} = Snakepit.execute("pid", %{}, pool: name)
      assert pid in os_pids(name)
    end

    # The first configured pool is the default.
    {:ok, pid} = Snakepit.execute("pid", %{}, pool: Snakepit.Pool)
    assert pid in os_pids(:hint)

    for opts <- [[pool_name: :nope], [pool_name: "nope"], [pool: :nope]] do
      assert {:error, %Error{category: :pool, details: %{reason: :pool_not_found}}} =
               Snakepit.execute("pid", %{}, opts)

      assert {:error, %Error{category: :pool, details: %{reason: :pool_not_found}}} =
               Snakepit.execute_stream("count_to", %{n: 1}, fn _ -> :ok end, opts)
    end
  end

  test "get_stats/list_workers per pool and in aggregate, counting errors" do
    before = Map.new(@modes, fn {name, _} -> {name, stats(name)} end)
    aggregate_before = Snakepit.get_stats()

    # Successes do not count as errors.
    {:ok, _} = Snakepit.execute("pid", %{}, pool_name: :hint)
    :ok = Snakepit.execute_stream("count_to", %{n: 2}, fn _ -> :ok end, pool_name: :queue)

    # hint: a Python exception and a stream whose callback raised.
    {:error, _} = Snakepit.execute("fail", %{kind: "value"}, pool_name: :hint)

    {:error, _} =
      Snakepit.execute_stream("count_to", %{n: 3}, fn _ -> raise "boom" end, pool_name: :hint)

    # queue: a caller timeout; fail_fast: arguments the codec refuses.
    {:error, %Error{category: :timeout}} =
      Snakepit.execute("sleep_ms", %{ms: 400}, pool_name: :queue, timeout: 50)

    {:error, _} = Snakepit.execute("echo", %{value: {:tuple}}, pool_name: :fail_fast)

    # Unknown pool: counted nowhere.
    {:error, _} = Snakepit.execute("pid", %{}, pool_name: :nope)

    after_ = Map.new(@modes, fn {name, _} -> {name, stats(name)} end)
    deltas = Map.new(after_, fn {name, s} -> {name, s.errors - before[name].errors} end)
    assert deltas == %{hint: 2, queue: 1, fail_fast: 1}
    assert after_.hint.requests - before.hint.requests == 3
    assert Snakepit.get_stats().errors - aggregate_before.errors == 4

    for {name, _} <- @modes do
      stats = Snakepit.get_stats(name)
      assert Enum.all?(@upstream_keys, &is_integer(Map.fetch!(stats, &1)))
      assert stats.workers == 2
      assert length(Snakepit.list_workers(name)) == 2
      assert Enum.all?(Snakepit.list_workers(name), &String.starts_with?(&1, "#{name}_worker_"))
    end

    aggregate = Snakepit.get_stats()
    assert Enum.all?(@upstream_keys, &is_integer(Map.fetch!(aggregate, &1)))
    assert aggregate.workers == 6

    assert Enum.sort(Snakepit.list_workers()) ==
             Enum.sort(Enum.flat_map(Keyword.keys(@modes), &Snakepit.list_workers/1))
  end

  # -- helpers -----------------------------------------------------------------------------------

  # Pins a session to a worker, keeps that worker busy for 800 ms, then makes a unary call and
  # a stream in the session, concurrently; each with its elapsed time.
  defp busy_session_worker(pool) do
    session = "#{pool}-#{System.unique_integer([:positive])}"
    {:ok, pinned} = Snakepit.execute_in_session(session, "pid", %{}, pool_name: pool)

    busy =
      Task.async(fn ->
        Snakepit.execute_in_session(session, "sleep_ms", %{ms: 800}, pool_name: pool)
      end)

    true = eventually(fn -> stats(pool).busy == 1 end)

    [call, stream] =
      [
        fn -> Snakepit.execute_in_session(session, "pid", %{}, pool_name: pool) end,
        fn -> stream_pids(session, pool) end
      ]
      |> Enum.map(&Task.async(fn -> timed(&1) end))
      |> Task.await_many(5_000)

    {:ok, %{"slept_ms" => 800}} = Task.await(busy, 5_000)
    %{pinned: pinned, call: call, stream: stream}
  end

  # The distinct worker pids a stream_whoami stream ran on.
  defp stream_pids(session, pool) do
    me = self()
    ref = make_ref()
    callback = fn chunk -> send(me, {ref, chunk["pid"]}) end

    with :ok <-
           Snakepit.execute_in_session_stream(session, "stream_whoami", %{n: 2}, callback,
             pool_name: pool
           ) do
      {:ok, Enum.uniq(collect_pids(ref))}
    end
  end

  defp collect_pids(ref) do
    receive do
      {^ref, nil} -> collect_pids(ref)
      {^ref, pid} -> [pid | collect_pids(ref)]
    after
      0 -> []
    end
  end

  defp timed(fun) do
    started = System.monotonic_time(:millisecond)
    result = fun.()
    {result, System.monotonic_time(:millisecond) - started}
  end

  defp stats(pool), do: Snakepit.Pool.get_stats(Snakepit.Pool, pool)

  defp os_pids(pool), do: Enum.map(Snakepit.list_workers(pool), &Snakepit.Worker.os_pid/1)
end
