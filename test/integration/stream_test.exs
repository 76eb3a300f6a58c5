defmodule Snakepit.Integration.StreamTest do
  # Streaming against real Python workers (fixture StreamAdapter): backpressure and bounded
  # memory, cancellation reaching the Python generator, affinity and queueing of streams.
  use ExUnit.Case, async: false

  import Snakepit.TestSupport

  alias Snakepit.Error

  @pool :stream

  setup_all do
    dir = Path.join(System.tmp_dir!(), "snakepit_stream_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)

    start_snakepit!(
      pools: [
        %{
          name: @pool,
          pool_size: 2,
          adapter_args: fixture_adapter("StreamAdapter"),
          adapter_env: fixture_env() ++ [{"SNAKEPIT_TEST_MARKER_DIR", dir}]
        }
      ]
    )

    await_workers!(2)

    %{dir: dir}
  end

  setup do
    # Every test starts with both workers idle (a previous test's cancelled stream may still be
    # closing in Python).
    assert eventually(fn -> stats().busy == 0 end, 5_000)
    :ok
  end

  describe "backpressure" do
    # 10 000 chunks of ~2 KB (≈ 20 MB in total) into a callback that sleeps 1 ms on every fourth
    # chunk, i.e. slower than Python produces (≈ 5 s). Measured (OTP 25, 3 runs): caller mailbox
    # ≤ 14 messages, BEAM total memory growth 0.5–2.3 MB, binary memory growth ≤ 0.45 MB, the
    # generator ≤ 1 015 chunks ahead of the callback (≈ the 2 MiB HTTP/2 stream window of the
    # Rust client, which stops reading once the 16-chunk credit is used up).
    # The same run with the window effectively unbounded (stream_window: 1_000_000): mailbox
    # ≈ 5 950, total +27 MB, binary +16.7 MB, generator ≈ 6 000 ahead.
    @chunks 10_000
    @pad 2_048
    @window 16
    @max_total_growth 6 * 1024 * 1024
    @max_binary_growth 4 * 1024 * 1024
    @max_lead 2_000

    test "a slow callback keeps the mailbox and BEAM memory bounded and throttles Python", %{
      dir: dir
    } do
      progress = Path.join(dir, "progress_mem")
      :erlang.garbage_collect()
      base = :erlang.memory()

      callback = fn %{"count" => count} ->
        if rem(count, 4) == 0, do: Process.sleep(1)
        if rem(count, 50) == 0, do: sample(count, base, progress)
        :ok
      end

      started = System.monotonic_time(:millisecond)

      assert :ok =
               Snakepit.execute_stream(
                 "tracked_count",
                 %{n: @chunks, tag: "mem", pad: @pad},
                 fn
                   %{"is_final" => true} = chunk when not is_map_key(chunk, "count") -> :ok
                   chunk -> callback.(chunk)
                 end,
                 pool_name: @pool
               )

      elapsed = System.monotonic_time(:millisecond) - started
      samples = Enum.reverse(Process.delete(:samples))
      assert length(samples) == div(@chunks, 50)

      max_mailbox = samples |> Enum.map(& &1.mailbox) |> Enum.max()
      max_total = samples |> Enum.map(& &1.total) |> Enum.max()
      max_binary = samples |> Enum.map(& &1.binary) |> Enum.max()
      max_lead = samples |> Enum.map(&(&1.produced - &1.consumed)) |> Enum.max()

      report =
        "elapsed #{elapsed} ms, mailbox ≤ #{max_mailbox}, total +#{max_total} B, " <>
          "binary +#{max_binary} B, generator lead ≤ #{max_lead}"

      assert max_mailbox <= @window + 2, report
      assert max_total < @max_total_growth, report
      assert max_binary < @max_binary_growth, report

      # The generator was throttled: it never ran more than @max_lead chunks ahead of the
      # callback, so after the first 2 000 chunks it had not finished yet.
      assert Enum.all?(samples, &(&1.produced >= 0)), report
      assert max_lead <= @max_lead, report
      assert %{produced: produced} = Enum.find(samples, &(&1.consumed == 2_000))
      assert produced < @chunks, report
    end

    test "the stream_window option bounds the caller's mailbox" do
      callback = fn chunk ->
        Process.sleep(2)
        {:message_queue_len, len} = Process.info(self(), :message_queue_len)
        Process.put(:max_len, max(len, Process.get(:max_len, 0)))
        chunk
      end

      assert :ok =
               Snakepit.execute_stream("count_to", %{n: 300}, callback,
                 pool_name: @pool,
                 stream_window: 4
               )

      assert Process.delete(:max_len) <= 4
    end
  end

  describe "cancellation reaches the Python generator" do
    test "halting after 10 chunks closes the generator", %{dir: dir} do
      n = 1_000_000 + System.unique_integer([:positive])
      test_pid = self()

      assert :ok =
               Snakepit.execute_stream(
                 "count_to",
                 %{n: n},
                 fn %{"count" => count} ->
                   send(test_pid, {:seen, count})
                   if count == 10, do: :halt, else: :ok
                 end,
                 pool_name: @pool
               )

      assert Enum.to_list(1..10) == collect_seen()
      refute_receive {:snakepit_chunk, _, _, _, _}, 50

      # count_to writes gen_closed_<pid>_<n> when closed before it finished.
      assert [_marker] =
               eventually(fn -> non_empty(Path.wildcard("#{dir}/gen_closed_*_#{n}")) end)
    end

    test "{:halt, reason} and a raising callback also close the generator", %{dir: dir} do
      assert {:error, %Error{details: %{reason: :had_enough}}} =
               Snakepit.execute_stream(
                 "tracked_count",
                 %{n: 1_000_000, tag: "halt_reason"},
                 fn %{"count" => c} -> if c == 5, do: {:halt, :had_enough}, else: :ok end,
                 pool_name: @pool
               )

      assert {:error, %Error{details: %{reason: {:callback_exception, %ArgumentError{}, _}}}} =
               Snakepit.execute_stream(
                 "tracked_count",
                 %{n: 1_000_000, tag: "raise"},
                 fn %{"count" => c} -> if c == 5, do: raise(ArgumentError), else: :ok end,
                 pool_name: @pool
               )

      for tag <- ["halt_reason", "raise"] do
        assert produced = eventually(fn -> read_int(Path.join(dir, "closed_#{tag}")) end)
        assert produced < 1_000_000
      end
    end

    test "the caller dying closes the generator and frees the worker", %{dir: dir} do
      test_pid = self()

      {pid, mref} =
        spawn_monitor(fn ->
          Snakepit.execute_stream(
            "tracked_count",
            %{n: 1_000_000, tag: "caller_death"},
            fn %{"count" => c} ->
              if c == 10, do: send(test_pid, :ten_chunks)
              :ok
            end,
            pool_name: @pool
          )
        end)

      assert_receive :ten_chunks, 5_000
      Process.exit(pid, :kill)
      assert_receive {:DOWN, ^mref, :process, ^pid, :killed}

      produced = eventually(fn -> read_int(Path.join(dir, "closed_caller_death")) end, 5_000)

      assert is_integer(produced) and produced < 1_000_000

      # The generator really stopped: its progress no longer moves.
      progress = read_int(Path.join(dir, "progress_caller_death"))
      Process.sleep(200)
      assert read_int(Path.join(dir, "progress_caller_death")) == progress
      assert eventually(fn -> stats().busy == 0 and stats().monitored_callers == 0 end)
    end
  end

  describe "affinity and queueing" do
    test "a stream in a session runs on the session's worker, and pins it for later calls" do
      for _ <- 1..5 do
        session = "stream-session-#{System.unique_integer([:positive])}"
        {:ok, pinned_pid} = Snakepit.execute_in_session(session, "pid", %{}, pool_name: @pool)

        chunks = stream_whoami(session, [])
        assert length(chunks) == 3
        assert Enum.all?(chunks, &(&1["pid"] == pinned_pid and &1["session_id"] == session))

        {:ok, %{last_worker_id: worker_id}} = Snakepit.Bridge.SessionStore.get_session(session)
        assert Snakepit.Worker.os_pid(worker_id) == pinned_pid
      end

      # A session opened by a stream keeps its worker for unary calls.
      for _ <- 1..5 do
        session = "stream-first-#{System.unique_integer([:positive])}"
        [%{"pid" => stream_pid} | _] = stream_whoami(session, [])

        for _ <- 1..3 do
          assert {:ok, ^stream_pid} =
                   Snakepit.execute_in_session(session, "pid", %{}, pool_name: @pool)
        end
      end
    end

    test "streams queue behind busy workers instead of failing" do
      before = stats()
      busy = occupy_workers(2, 800)
      started = System.monotonic_time(:millisecond)

      assert :ok = Snakepit.execute_stream("count_to", %{n: 3}, fn _ -> :ok end, pool_name: @pool)

      elapsed = System.monotonic_time(:millisecond) - started
      assert elapsed >= 300, "the stream did not wait for a worker (#{elapsed} ms)"
      assert stats().queued_total > before.queued_total
      Enum.each(busy, &Task.await(&1, 5_000))
    end

    test "streams obey strict affinity modes" do
      session = "strict-stream-#{System.unique_integer([:positive])}"
      {:ok, pinned_pid} = Snakepit.execute_in_session(session, "pid", %{}, pool_name: @pool)

      busy =
        Task.async(fn ->
          Snakepit.execute_in_session(session, "sleep_ms", %{ms: 800}, pool_name: @pool)
        end)

      assert eventually(fn -> stats().busy == 1 end)

      assert {:error, %Error{category: :pool, details: %{reason: :worker_busy}}} =
               Snakepit.execute_in_session_stream(session, "count_to", %{n: 3}, fn _ -> :ok end,
                 pool_name: @pool,
                 affinity: :strict_fail_fast
               )

      # :strict_queue waits for the session's worker although the other one is idle.
      started = System.monotonic_time(:millisecond)
      chunks = stream_whoami(session, affinity: :strict_queue)
      assert System.monotonic_time(:millisecond) - started >= 300
      assert Enum.all?(chunks, &(&1["pid"] == pinned_pid))
      assert {:ok, %{"slept_ms" => 800}} = Task.await(busy, 5_000)
    end
  end

  # -- helpers -----------------------------------------------------------------------------------

  defp stats, do: Snakepit.Pool.get_stats(Snakepit.Pool, @pool)

  defp sample(count, base, progress) do
    {:message_queue_len, mailbox} = Process.info(self(), :message_queue_len)
    memory = :erlang.memory()

    entry = %{
      consumed: count,
      mailbox: mailbox,
      total: memory[:total] - base[:total],
      binary: memory[:binary] - base[:binary],
      produced: read_int(progress) || -1
    }

    Process.put(:samples, [entry | Process.get(:samples, [])])
  end

  defp read_int(path) do
    case File.read(path) do
      {:ok, text} ->
        case Integer.parse(String.trim(text)) do
          {n, ""} -> n
          _ -> nil
        end

      {:error, _} ->
        nil
    end
  end

  defp stream_whoami(session, opts) do
    test_pid = self()
    ref = make_ref()

    assert :ok =
             Snakepit.execute_in_session_stream(
               session,
               "stream_whoami",
               %{n: 3},
               &send(test_pid, {ref, &1}),
               Keyword.put(opts, :pool_name, @pool)
             )

    for {^ref, %{"i" => _} = chunk} <- drain(ref), do: chunk
  end

  defp drain(ref, acc \\ []) do
    receive do
      {^ref, _} = message -> drain(ref, [message | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end

  defp collect_seen(acc \\ []) do
    receive do
      {:seen, n} -> collect_seen([n | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end

  defp occupy_workers(n, ms) do
    tasks =
      for _ <- 1..n do
        Task.async(fn -> Snakepit.execute("sleep_ms", %{ms: ms}, pool_name: @pool) end)
      end

    assert eventually(fn -> stats().busy == n end)
    tasks
  end

  defp non_empty([]), do: nil
  defp non_empty(list), do: list
end
