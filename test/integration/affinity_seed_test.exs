defmodule Snakepit.Integration.AffinitySeedTest do
  # Issue #3, "seed" scenario with real Python workers (process profile, 2 workers per pool):
  # a session keeps an object in its worker's memory, that worker is kept busy by another
  # session, and each affinity mode does what it promises. Then the session's worker is killed:
  # strict sessions are never moved to another worker.
  #
  # Synchronisation is explicit: the busy worker is found through the session store and the
  # scheduler's per-worker load; "ran after the busy call" is checked with Python's
  # CLOCK_MONOTONIC stamps (AffinityAdapter.busy / fetch_stamped), not with BEAM-side timing.
  use ExUnit.Case, async: false

  import Snakepit.TestSupport
  import Snakepit.FaultSupport

  alias Snakepit.{Error, Native, OsProcess}
  alias Snakepit.Bridge.SessionStore

  @moduletag :capture_log

  @pools [hint: :hint, queue: :strict_queue, fail_fast: :strict_fail_fast]
  @object %{"weights" => [1, 2, 3], "name" => "model"}
  # How long the session's worker is kept busy; "at once" means well below it.
  @busy_ms 3_000
  @at_once_ms 1_000

  setup_all do
    pools =
      for {name, affinity} <- @pools do
        %{
          name: name,
          pool_size: 2,
          worker_profile: :process,
          affinity: affinity,
          adapter_args: fixture_adapter("AffinityAdapter"),
          adapter_env: fixture_env()
        }
      end

    start_snakepit!(pools: pools)
    await_workers!(6)
  end

  setup do
    for {name, _} <- @pools, do: assert_pool_idle(name, 2)
    :ok
  end

  describe "the session's worker is busy" do
    test ":hint runs the call at once on the other worker: the object is missing there, and the session moves" do
      seed = seed(:hint)
      blocker = occupy(seed)

      {ms, result} = timed(fn -> fetch(seed, "fetch_object") end)

      assert {:error, %Error{category: :worker} = error} = result
      assert %Snakepit.Error.KeyError{message: message} = error.details.reason
      assert message =~ "Unknown reference"
      assert message =~ seed.session
      assert ms < @at_once_ms, "hint call took #{ms} ms"
      assert still_running?(blocker), "the hint call waited for the busy call"

      # The affinity moved to the worker that served the call.
      assert session_worker(seed) == seed.other
      assert {:ok, %{last_worker_id: other}} = SessionStore.get_session(seed.session)
      assert other == seed.other

      # The next call of the session goes there although the old worker is still busy.
      assert {:ok, %{"pid" => pid}} = call(seed, "whoami", %{})
      assert pid == python_pid(seed.other)
      assert still_running?(blocker)

      assert {:ok, %{"pid" => busy_pid}} = Task.await(blocker, @busy_ms + 10_000)
      assert busy_pid == seed.home_pid
    end

    test ":strict_queue waits for the busy call, then runs on the session's worker and finds the object" do
      seed = seed(:queue)
      blocker = occupy(seed)

      call = Task.async(fn -> fetch(seed, "fetch_stamped", timeout: 30_000) end)

      # Queued pinned to the busy worker while the other worker stays idle.
      assert eventually(fn -> nif_stats(:queue).queued == 1 end)
      Process.sleep(300)
      assert nif_stats(:queue).queued == 1
      assert load(:queue, seed.other) == 0
      assert Task.yield(call, 0) == nil, "the strict_queue call did not wait"
      assert still_running?(blocker)

      assert {:ok, %{"pid" => busy_pid, "ended_ns" => busy_ended}} =
               Task.await(blocker, @busy_ms + 10_000)

      assert {:ok, %{"value" => @object, "pid" => pid, "started_ns" => started}} =
               Task.await(call, 30_000)

      assert busy_pid == seed.home_pid
      assert pid == seed.home_pid
      assert started >= busy_ended, "the queued call started before the busy call ended"
      assert session_worker(seed) == seed.home
    end

    test ":strict_fail_fast rejects the call at once with :worker_busy and keeps the session" do
      seed = seed(:fail_fast)
      blocker = occupy(seed)

      {ms, result} = timed(fn -> fetch(seed, "fetch_object") end)

      assert {:error,
              %Error{
                category: :pool,
                details: %{reason: :worker_busy, pool_name: :fail_fast}
              }} = result

      assert ms < @at_once_ms, "fail-fast call took #{ms} ms"
      assert still_running?(blocker)
      assert session_worker(seed) == seed.home
      assert load(:fail_fast, seed.other) == 0

      # Once the worker is free again, the session finds its object there.
      assert {:ok, %{"pid" => busy_pid}} = Task.await(blocker, @busy_ms + 10_000)
      assert busy_pid == seed.home_pid
      assert {:ok, @object} = fetch(seed, "fetch_object")
    end

    test "a per-call affinity: overrides the pool's mode" do
      # Pool :hint, calls :strict_fail_fast and :strict_queue.
      seed = seed(:hint)
      blocker = occupy(seed)

      {ms, result} = timed(fn -> fetch(seed, "fetch_object", affinity: :strict_fail_fast) end)
      assert {:error, %Error{category: :pool, details: %{reason: :worker_busy}}} = result
      assert ms < @at_once_ms
      assert session_worker(seed) == seed.home

      queued =
        Task.async(fn ->
          fetch(seed, "fetch_stamped", affinity: :strict_queue, timeout: 30_000)
        end)

      assert eventually(fn -> nif_stats(:hint).queued == 1 end)
      assert load(:hint, seed.other) == 0
      assert Task.yield(queued, 0) == nil
      assert still_running?(blocker)

      assert {:ok, %{"ended_ns" => busy_ended}} = Task.await(blocker, @busy_ms + 10_000)

      assert {:ok, %{"value" => @object, "pid" => pid, "started_ns" => started}} =
               Task.await(queued, 30_000)

      assert pid == seed.home_pid
      assert started >= busy_ended
      assert session_worker(seed) == seed.home

      # Pool :strict_fail_fast, call :hint: served at once elsewhere, the session moves.
      seed = seed(:fail_fast)
      blocker = occupy(seed)

      {ms, result} = timed(fn -> fetch(seed, "fetch_object", affinity: :hint) end)

      assert {:error, %Error{details: %{reason: %Snakepit.Error.KeyError{message: message}}}} =
               result

      assert message =~ "Unknown reference"
      assert ms < @at_once_ms
      assert still_running?(blocker)
      assert session_worker(seed) == seed.other

      assert {:ok, _} = Task.await(blocker, @busy_ms + 10_000)
    end
  end

  describe "the session's worker is killed" do
    test "strict calls get :session_worker_unavailable (queued ones at once) and the session never moves" do
      # Pool :strict_queue; :strict_fail_fast per call.
      seed = seed(:queue)
      blocker = occupy(seed, 60_000)

      queued = Task.async(fn -> timed(fn -> fetch(seed, "fetch_object", timeout: 30_000) end) end)

      assert eventually(fn -> nif_stats(:queue).queued == 1 end)

      assert {:error, %Error{details: %{reason: :worker_busy}}} =
               fetch(seed, "fetch_object", affinity: :strict_fail_fast)

      killed_at = System.monotonic_time(:millisecond)
      OsProcess.kill(seed.home_pid, "KILL")

      # The call queued pinned to the dead worker is answered when the worker goes away, not
      # at its 30 s timeout (nor at the 10 s queue timeout).
      assert {_ms, result} = Task.await(queued, 5_000)
      answered_after = System.monotonic_time(:millisecond) - killed_at

      assert {:error,
              %Error{
                category: :pool,
                details: %{reason: :session_worker_unavailable, pool_name: :queue}
              }} = result

      assert answered_after < 2_000, "queued call answered #{answered_after} ms after the kill"

      assert {:error, %Error{details: %{reason: :worker_exit, exit_reason: {:exit_status, 137}}}} =
               Task.await(blocker, 5_000)

      refute seed.home in Snakepit.list_workers(:queue)
      assert_unavailable(seed)

      # The replacement worker comes up: the session is still not moved to it (nor to the
      # other worker); the scheduler keeps the dead worker as its tombstone.
      assert eventually(
               fn ->
                 workers = Snakepit.list_workers(:queue)
                 length(workers) == 2 and seed.home not in workers
               end,
               30_000
             )

      assert_pool_idle(:queue, 2)
      assert_unavailable(seed)
      # Not re-bound to a live worker: the session still names its dead worker.
      assert session_worker(seed) == seed.home
      refute session_worker(seed) in Snakepit.list_workers(:queue)
      assert {:ok, %{last_worker_id: last}} = SessionStore.get_session(seed.session)
      assert last == seed.home

      # Deleting the session lets it start over on a live worker (whose memory does not have
      # the object: it died with the old worker).
      assert :ok = SessionStore.delete_session(seed.session)
      assert session_worker(seed) == nil

      for affinity <- [:strict_queue, :strict_fail_fast] do
        assert {:error, %Error{details: %{reason: %Snakepit.Error.KeyError{}}}} =
                 fetch(seed, "fetch_object", affinity: affinity)
      end

      new_home = session_worker(seed)
      assert new_home in Snakepit.list_workers(:queue)
      assert new_home != seed.home

      assert {:ok, %{"pid" => pid}} = call(seed, "store_object", %{key: "model", value: @object})
      assert pid == python_pid(new_home)

      for affinity <- [:strict_queue, :strict_fail_fast] do
        assert {:ok, @object} = fetch(seed, "fetch_object", affinity: affinity)
      end

      assert session_worker(seed) == new_home
    end
  end

  # -- helpers -----------------------------------------------------------------------------------

  # A fresh session of `pool` that stored @object in its worker's memory, with that worker
  # (`home`, its OS pid `home_pid`) and the pool's other worker.
  defp seed(pool) do
    session = unique("seed")
    on_exit(fn -> SessionStore.delete_session(session) end)

    assert {:ok, %{"pid" => home_pid, "session_id" => ^session}} =
             Snakepit.execute("store_object", %{key: "model", value: @object},
               pool_name: pool,
               session_id: session
             )

    assert {:ok, %{last_worker_id: home}} = SessionStore.get_session(session)
    assert python_pid(home) == home_pid
    assert [other] = Snakepit.list_workers(pool) -- [home]

    %{pool: pool, session: session, home: home, home_pid: home_pid, other: other}
  end

  # Keeps the seed's worker busy for `ms` with a call of *another* session pinned to it, and
  # waits until the scheduler shows that worker (and only it) loaded. Returns the call's task.
  defp occupy(seed, ms \\ @busy_ms) do
    blocker = pinned_session(seed)

    task =
      Task.async(fn ->
        Snakepit.execute("busy", %{ms: ms},
          pool_name: seed.pool,
          session_id: blocker,
          affinity: :strict_queue,
          timeout: ms + 30_000
        )
      end)

    assert eventually(fn -> load(seed.pool, seed.home) == 1 end)
    assert load(seed.pool, seed.other) == 0
    task
  end

  # A new session bound to the seed's worker. A session's first call goes to the least-loaded
  # worker (ties rotate), so among a few fresh sessions on an idle pool one lands there.
  defp pinned_session(seed) do
    session =
      Enum.find_value(1..20, fn _ ->
        session = unique("blocker")
        on_exit(fn -> SessionStore.delete_session(session) end)

        {:ok, pid} = Snakepit.execute("pid", %{}, pool_name: seed.pool, session_id: session)
        if pid == seed.home_pid, do: session, else: nil
      end)

    assert session, "no fresh session landed on #{seed.home}"
    assert Native.pool_session_worker(resource(seed.pool), session) == seed.home
    session
  end

  defp call(seed, tool, args, opts \\ []) do
    Snakepit.execute(tool, args, [pool_name: seed.pool, session_id: seed.session] ++ opts)
  end

  defp fetch(seed, tool, opts \\ []), do: call(seed, tool, %{key: "model"}, opts)

  # Both strict modes refuse the session at once.
  defp assert_unavailable(seed) do
    for affinity <- [:strict_queue, :strict_fail_fast] do
      {ms, result} =
        timed(fn -> fetch(seed, "fetch_object", affinity: affinity, timeout: 30_000) end)

      assert {:error, %Error{category: :pool, details: %{reason: :session_worker_unavailable}}} =
               result,
             "#{affinity}: #{inspect(result)}"

      assert ms < @at_once_ms, "#{affinity} answered after #{ms} ms"
    end
  end

  defp still_running?(task), do: Task.yield(task, 0) == nil

  defp session_worker(seed), do: Native.pool_session_worker(resource(seed.pool), seed.session)

  defp load(pool, worker_id) do
    case Enum.find(nif_workers(pool), &(&1.id == worker_id)) do
      %{load: load} -> load
      nil -> nil
    end
  end

  defp unique(prefix), do: "#{prefix}-#{System.unique_integer([:positive])}"
end
