defmodule Snakepit.Integration.FaultCrashTest do
  # Issue #6: a worker crashing mid-request (os._exit, SIGSEGV, SIGABRT, SIGKILL as the OOM
  # killer sends it), with real Python workers.
  use ExUnit.Case, async: false

  import Snakepit.TestSupport
  import Snakepit.FaultSupport

  alias Snakepit.{Error, OsProcess}

  @moduletag :capture_log

  describe "the callers of a crashing worker" do
    test "get the exit status within 500 ms, and the worker is out of the scheduler at once" do
      start_snakepit!(pools: [fault_pool(:crash, %{pool_size: 2})])

      cases = [
        {"crash", %{code: 1}, 1},
        {"crash", %{code: 7}, 7},
        {"segfault", %{}, 139},
        {"abort", %{}, 134}
      ]

      for {tool, args, status} <- cases do
        assert_pool_idle(:crash, 2)
        before = Snakepit.list_workers()

        {ms, result} = timed(fn -> Snakepit.execute(tool, args, pool_name: :crash) end)

        assert {:error, %Error{category: :worker, message: "Worker process exited"} = error} =
                 result

        assert error.details.reason == :worker_exit
        assert error.details.exit_reason == {:exit_status, status}, "#{tool}: #{inspect(error)}"
        assert ms < 500, "#{tool}: answered after #{ms} ms"

        crashed = error.details.worker_id
        assert crashed in before
        refute crashed in Enum.map(nif_workers(:crash), & &1.id)
      end
    end

    test "every in-flight caller of a SIGKILLed worker (exit 137) is answered; queued work survives" do
      # One worker running 3 calls at once (thread profile), 2 more calls queued.
      pool =
        fault_pool(:crash, %{
          pool_size: 1,
          worker_profile: :thread,
          threads_per_worker: 3
        })

      start_snakepit!(pools: [pool])
      [worker] = Snakepit.list_workers()
      os_pid = python_pid(worker)

      running =
        for _ <- 1..3 do
          Task.async(fn ->
            Snakepit.execute("sleep_ms", %{ms: 20_000}, pool_name: :crash, timeout: 60_000)
          end)
        end

      assert eventually(fn -> nif_stats(:crash).in_flight == 3 end)

      queued =
        for _ <- 1..2 do
          Task.async(fn -> Snakepit.execute("pid", %{}, pool_name: :crash, timeout: 60_000) end)
        end

      assert eventually(fn -> nif_stats(:crash).queued == 2 end)

      killed_at = System.monotonic_time(:millisecond)
      OsProcess.kill(os_pid, "KILL")

      for task <- running do
        assert {:error, %Error{} = error} = Task.await(task, 5_000)
        assert System.monotonic_time(:millisecond) - killed_at < 500
        assert error.details.exit_reason == {:exit_status, 137}
        assert error.details.worker_id == worker
      end

      # The queued calls were never on the dead worker: the replacement serves them.
      for task <- queued do
        assert {:ok, pid} = Task.await(task, 30_000)
        assert pid != os_pid
      end
    end

    test "a strict session's calls get :session_worker_unavailable and never move" do
      start_snakepit!(pools: [fault_pool(:crash, %{pool_size: 2, affinity: :strict_queue})])
      session = "strict-#{System.unique_integer([:positive])}"
      opts = [pool_name: :crash, session_id: session, timeout: 30_000]

      assert {:ok, home} = Snakepit.execute("pid", %{}, opts)
      running = Task.async(fn -> Snakepit.execute("sleep_ms", %{ms: 20_000}, opts) end)
      assert eventually(fn -> nif_stats(:crash).in_flight == 1 end)

      # Queued behind the running call, pinned to the session's worker.
      pinned = for _ <- 1..2, do: Task.async(fn -> Snakepit.execute("pid", %{}, opts) end)
      assert eventually(fn -> nif_stats(:crash).queued == 2 end)

      OsProcess.kill(home, "KILL")

      assert {:error, %Error{details: %{exit_reason: {:exit_status, 137}}}} =
               Task.await(running, 5_000)

      for task <- pinned do
        assert {:error, %Error{category: :pool, details: %{reason: :session_worker_unavailable}}} =
                 Task.await(task, 5_000)
      end

      # Even once the replacement is up, the session is not moved to another process.
      assert_pool_idle(:crash, 2)

      assert {:error, %Error{details: %{reason: :session_worker_unavailable}}} =
               Snakepit.execute("pid", %{}, opts)

      # An idempotent call of a strict session is not retried elsewhere either.
      assert {:error, %Error{details: %{reason: :session_worker_unavailable}}} =
               Snakepit.execute("pid", %{}, Keyword.put(opts, :idempotent, true))

      assert {:ok, other} = Snakepit.execute("pid", %{}, pool_name: :crash)
      assert other != home
    end
  end

  describe "a crashed worker" do
    test "is detected even when a child keeps its output pipe open" do
      capture_telemetry([[:snakepit, :worker, :crash]])
      start_snakepit!(pools: [fault_pool(:crash, %{pool_size: 1})])
      [worker] = Snakepit.list_workers()

      # Children that inherited stdout (one of them in its own session): the Port sees no EOF,
      # so it would never report the exit.
      assert {:ok, child} = Snakepit.execute("spawn_inheriting", %{}, pool_name: :crash)

      assert {:ok, setsid_child} =
               Snakepit.execute("spawn_inheriting", %{setsid: true}, pool_name: :crash)

      {ms, result} = timed(fn -> Snakepit.execute("crash", %{code: 9}, pool_name: :crash) end)
      assert {:error, %Error{}} = result
      assert ms < 500

      # The real exit status is still found, the worker replaced, the children gone.
      assert_receive {:telemetry, [:snakepit, :worker, :crash], _,
                      %{worker_id: ^worker, exit_code: 9}},
                     2_000

      assert eventually(fn -> match?([id] when id != worker, Snakepit.list_workers()) end)
      refute OsProcess.alive?(child)
      refute OsProcess.alive?(setsid_child)
      assert {:ok, _} = Snakepit.execute("pid", %{}, pool_name: :crash)
    end

    test "is restarted at once, and repeated crashes of a slot back off" do
      capture_telemetry([[:snakepit, :worker, :crash], [:snakepit, :worker, :restarted]])
      start_snakepit!(pools: [fault_pool(:crash, %{pool_size: 1})])

      # Crash the slot's worker 5 times in a row; restart delays: 0, 100, 200, 400, 800 ms.
      gaps =
        for _ <- 1..5 do
          {:error, %Error{details: %{worker_id: id}}} =
            Snakepit.execute("crash", %{code: 3}, pool_name: :crash)

          assert_receive {:telemetry, [:snakepit, :worker, :crash], _, %{worker_id: ^id}}, 1_000
          crashed_at = System.monotonic_time(:millisecond)

          assert_receive {:telemetry, [:snakepit, :worker, :restarted], _,
                          %{previous_worker_id: ^id}},
                         15_000

          assert :ok = Snakepit.Pool.await_ready(:crash, 15_000)
          System.monotonic_time(:millisecond) - crashed_at
        end

      [first | _] = gaps
      last = List.last(gaps)
      assert last - first >= 500, "restart gaps #{inspect(gaps)} show no backoff"
    end
  end

  describe "idempotent retry" do
    setup do
      start_snakepit!(pools: [fault_pool(:crash, %{pool_size: 2})])
      %{dir: tmp_dir!("snakepit-retry")}
    end

    test "an idempotent :hint call is retried once on another worker", %{dir: dir} do
      retries = nif_stats(:crash).retries

      for {args, opts} <- [
            {%{}, [idempotent: true]},
            {%{"idempotent" => true}, []},
            {%{idempotent: true}, [session_id: "hint-session"]}
          ] do
        assert_pool_idle(:crash, 2)
        path = Path.join(dir, "claim-#{System.unique_integer([:positive])}")
        args = Map.put(args, :path, path)

        assert {:ok, %{"pid" => served_by}} =
                 Snakepit.execute("crash_first", args, [pool_name: :crash] ++ opts)

        crashed = path |> File.read!() |> String.to_integer()
        assert served_by != crashed
        refute OsProcess.alive?(crashed)
      end

      assert nif_stats(:crash).retries == retries + 3
    end

    test "a call not marked idempotent is not retried", %{dir: dir} do
      path = Path.join(dir, "claim")

      assert {:error, %Error{details: %{exit_reason: {:exit_status, 1}}}} =
               Snakepit.execute("crash_first", %{path: path}, pool_name: :crash)

      assert nif_stats(:crash).retries == 0
    end

    test "an idempotent call of a strict session is not moved elsewhere", %{dir: dir} do
      opts = [pool_name: :crash, session_id: "s1", affinity: :strict_queue, idempotent: true]
      assert {:ok, home} = Snakepit.execute("pid", %{}, opts)
      path = Path.join(dir, "claim")

      assert {:error, %Error{category: :pool, details: %{reason: :session_worker_unavailable}}} =
               Snakepit.execute("crash_first", %{path: path}, opts)

      assert path |> File.read!() |> String.to_integer() == home
      assert nif_stats(:crash).retries == 0
    end

    test "a retry happens once: a call that crashes every worker fails" do
      assert {:error, %Error{details: %{reason: :worker_exit, exit_reason: {:exit_status, 5}}}} =
               Snakepit.execute("crash", %{code: 5}, pool_name: :crash, idempotent: true)

      assert nif_stats(:crash).retries == 1
    end
  end

  test "retry: :never turns the retry off" do
    pool = fault_pool(:crash, %{pool_size: 2, crash_barrier: %{retry: :never}})
    start_snakepit!(pools: [pool])
    path = Path.join(tmp_dir!("snakepit-retry"), "claim")

    assert {:error, %Error{details: %{exit_reason: {:exit_status, 1}}}} =
             Snakepit.execute("crash_first", %{path: path}, pool_name: :crash, idempotent: true)
  end

  describe "crash barrier" do
    test "the replacement of a worker that crashed hard is tainted; a plain exit is not" do
      capture_telemetry([
        [:snakepit, :worker, :crash],
        [:snakepit, :worker, :restarted],
        [:snakepit, :worker, :tainted]
      ])

      barrier = %{enabled: true, taint_duration_ms: 60_000}
      start_snakepit!(pools: [fault_pool(:crash, %{pool_size: 2, crash_barrier: barrier})])

      # Exit status 1 is not classified: the replacement is not tainted.
      assert {:error, %Error{details: %{worker_id: plain}}} =
               Snakepit.execute("crash", %{code: 1}, pool_name: :crash)

      assert_receive {:telemetry, [:snakepit, :worker, :crash], _,
                      %{worker_id: ^plain, exit_code: 1, classification: {:exit_code, 1}}},
                     1_000

      assert_receive {:telemetry, [:snakepit, :worker, :restarted], _,
                      %{previous_worker_id: ^plain}},
                     15_000

      refute_received {:telemetry, [:snakepit, :worker, :tainted], _, _}
      assert_pool_idle(:crash, 2)

      # A segfault is: its replacement takes no new work while the other worker can.
      assert {:error, %Error{details: %{worker_id: hard}}} =
               Snakepit.execute("segfault", %{}, pool_name: :crash)

      assert_receive {:telemetry, [:snakepit, :worker, :crash], _,
                      %{worker_id: ^hard, exit_code: 139, classification: :segfault}},
                     1_000

      assert_receive {:telemetry, [:snakepit, :worker, :tainted], %{duration_ms: 60_000},
                      %{previous_worker_id: ^hard, worker_id: tainted, classification: :segfault}},
                     15_000

      assert %{tainted: true} = Enum.find(nif_workers(:crash), &(&1.id == tainted))
      [healthy] = Snakepit.list_workers() -- [tainted]
      healthy_pid = python_pid(healthy)

      for _ <- 1..10 do
        assert {:ok, ^healthy_pid} = Snakepit.execute("pid", %{}, pool_name: :crash)
      end
    end

    test "the last usable worker is never tainted" do
      capture_telemetry([[:snakepit, :worker, :restarted], [:snakepit, :worker, :tainted]])
      barrier = %{enabled: true}
      start_snakepit!(pools: [fault_pool(:crash, %{pool_size: 1, crash_barrier: barrier})])

      assert {:error, %Error{details: %{exit_reason: {:exit_status, 139}}}} =
               Snakepit.execute("segfault", %{}, pool_name: :crash)

      assert_receive {:telemetry, [:snakepit, :worker, :restarted], _, _}, 15_000
      refute_received {:telemetry, [:snakepit, :worker, :tainted], _, _}
      assert {:ok, _} = Snakepit.execute("pid", %{}, pool_name: :crash)
    end
  end
end
