# End-to-end check of the NIF alone (no Elixir application): real Python workers, real NIF.
#
#   cargo build -p snakepit_nif --release
#   elixir native/snakepit_nif/test/nif_smoke.exs
#
# Env: NIF_PATH (default target/release/libsnakepit_nif, without ".so"), SNAKEPIT_PYTHON
# (default .venv/bin/python). Run with plain `elixir`, not mix: it defines its own
# `Snakepit.Native` stub module.
root = Path.expand("../../..", __DIR__)
Application.put_env(:smoke, :root, root)

defmodule Snakepit.Native do
  @on_load :load
  def load do
    root = Application.get_env(:smoke, :root)
    path = System.get_env("NIF_PATH", Path.join(root, "target/release/libsnakepit_nif"))
    :erlang.load_nif(String.to_charlist(path), 0)
  end

  def pool_new(_, _), do: :erlang.nif_error(:nif_not_loaded)
  def pool_add_worker(_, _, _, _), do: :erlang.nif_error(:nif_not_loaded)
  def pool_remove_worker(_, _, _), do: :erlang.nif_error(:nif_not_loaded)
  def pool_taint_worker(_, _, _), do: :erlang.nif_error(:nif_not_loaded)
  def pool_submit(_, _, _, _, _), do: :erlang.nif_error(:nif_not_loaded)
  def pool_cancel(_, _), do: :erlang.nif_error(:nif_not_loaded)
  def pool_stream_ack(_, _, _), do: :erlang.nif_error(:nif_not_loaded)
  def pool_stats(_), do: :erlang.nif_error(:nif_not_loaded)
  def pool_workers(_), do: :erlang.nif_error(:nif_not_loaded)
  def pool_session_worker(_, _), do: :erlang.nif_error(:nif_not_loaded)
  def pool_delete_session(_, _), do: :erlang.nif_error(:nif_not_loaded)
  def pool_close(_), do: :erlang.nif_error(:nif_not_loaded)
end

ExUnit.start(timeout: 30_000)

defmodule Smoke do
  use ExUnit.Case
  alias Snakepit.Native, as: N

  setup_all do
    root = Application.get_env(:smoke, :root)
    python = System.get_env("SNAKEPIT_PYTHON", Path.join(root, ".venv/bin/python"))
    dir = Path.join(System.tmp_dir!(), "nif_smoke_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)

    workers =
      for i <- 1..2 do
        sock = Path.join(dir, "w#{i}.sock")

        port =
          Port.open({:spawn_executable, python}, [
            :binary,
            :exit_status,
            {:line, 65536},
            args: [
              "-u",
              "-m",
              "snakepit_bridge.server",
              "--adapter",
              "snakepit_bridge.adapters.showcase.ShowcaseAdapter",
              "--socket",
              sock,
              "--worker-id",
              "w#{i}"
            ],
            env: [{~c"PYTHONPATH", String.to_charlist(Path.join(root, "priv/python"))}]
          ])

        wait_ready(port)
        {"w#{i}", "unix:" <> sock, port}
      end

    %{workers: workers, dir: dir}
  end

  # A dedicated worker running the test suite's ContractAdapter (crash, segfault, sleep_ms).
  defp start_worker(dir, id) do
    root = Application.get_env(:smoke, :root)
    python = System.get_env("SNAKEPIT_PYTHON", Path.join(root, ".venv/bin/python"))
    sock = Path.join(dir, "#{id}.sock")
    path = Enum.join([Path.join(root, "priv/python"), Path.join(root, "test/fixtures/python")], ":")

    port =
      Port.open({:spawn_executable, python}, [
        :binary,
        :exit_status,
        {:line, 65536},
        args: [
          "-u",
          "-m",
          "snakepit_bridge.server",
          "--adapter",
          "snakepit_test_adapters.ContractAdapter",
          "--socket",
          sock,
          "--worker-id",
          id
        ],
        env: [{~c"PYTHONPATH", String.to_charlist(path)}]
      ])

    wait_ready(port)
    {id, "unix:" <> sock, port}
  end

  # What the Elixir worker owner sees when its Python process dies.
  defp await_exit(port) do
    receive do
      {^port, {:exit_status, s}} -> s
      {^port, {:data, _}} -> await_exit(port)
    after
      5_000 -> flunk("worker did not exit")
    end
  end

  defp wait_ready(port) do
    receive do
      {^port, {:data, {:eol, "SNAKEPIT_READY" <> _}}} -> :ok
      {^port, {:data, _}} -> wait_ready(port)
      {^port, {:exit_status, s}} -> raise "python exited #{s}"
    after
      20_000 -> raise "no ready"
    end
  end

  defp pool(workers, config \\ %{}, n \\ 1) do
    p = N.pool_new(Map.merge(%{name: "smoke", queue_timeout_ms: 5_000}, config), self())
    for {id, ep, _} <- Enum.take(workers, n), do: :ok = N.pool_add_worker(p, id, ep, 1)
    p
  end

  defp call(p, cmd, args, opts \\ %{}) do
    ref = make_ref()

    case N.pool_submit(p, ref, cmd, args, opts) do
      {:ok, id} ->
        receive do
          {:snakepit_reply, ^ref, r} -> {id, r}
        after
          10_000 -> flunk("no reply")
        end

      {:error, _} = e ->
        e
    end
  end

  test "unary values round trip", %{workers: w} do
    p = pool(w)
    big = 123_456_789_012_345_678_901_234_567_890

    args = %{
      a: 1,
      b: 2.5,
      c: [nil, true, "x", :atom],
      d: %{"k" => %{1 => big}},
      e: :nan,
      f: :neg_infinity
    }

    {_, {:ok, %{"echoed" => %{"a" => 1, "b" => 2.5} = r}}} = call(p, "echo", args)
    assert r["c"] == [nil, true, "x", "atom"]
    assert r["d"] == %{"k" => %{"1" => big}}
    {_, {:ok, 3}} = call(p, "add", %{a: 1, b: 2})
  end

  test "invalid parameters", %{workers: w} do
    p = pool(w)
    assert {:error, {:invalid_parameter, "a.b[1]", msg}} = call(p, "echo", %{a: %{b: [1, {:t}]}})
    assert msg =~ "tuple"
    assert {:error, {:invalid_parameter, "x", msg}} = call(p, "echo", %{x: <<255>>})
    assert msg =~ "UTF-8"
    assert {:error, {:invalid_parameter, "y", _}} = call(p, "echo", %{y: [1 | 2]})
    assert {:error, {:invalid_parameter, "z", _}} = call(p, "echo", %{z: self()})
    assert {:error, {:invalid_parameter, "d", m}} = call(p, "echo", %{d: ~D[2024-01-01]})
    assert m =~ "struct"

    assert_raise ErlangError, fn ->
      N.pool_submit(p, make_ref(), "echo", %{}, %{timeout_ms: -1})
    end

    assert_raise ErlangError, fn -> N.pool_new(%{affinity: :bogus}, self()) end
  end

  test "python errors and binary params", %{workers: w} do
    p = pool(w)

    {_, {:error, {:python, %{"type" => t, "message" => _}}}} =
      call(p, "error_demo", %{error_type: "value"})

    assert t == "ValueError"

    {_, r} =
      call(p, "echo", %{}, %{
        binary_parameters: %{"blob" => <<0, 255>>},
        metadata: %{"correlation_id" => "c1"}
      })

    assert {:error, {:python, %{"type" => "TypeError"}}} = r
    {_, {:error, {:python, %{"type" => "AttributeError"}}}} = call(p, "no_such_tool", %{})
  end

  test "streaming with credits", %{workers: w} do
    p = pool(w)
    ref = make_ref()

    {:ok, id} =
      N.pool_submit(p, ref, "stream_fibonacci", %{count: 6}, %{stream: true, stream_window: 2})

    chunks = collect(p, ref, id, [])
    assert length(chunks) >= 6
  end

  defp collect(p, ref, id, acc) do
    receive do
      {:snakepit_chunk, ^ref, payload, final, meta} ->
        N.pool_stream_ack(p, id, 1)
        collect(p, ref, id, [{payload, final, meta} | acc])

      {:snakepit_reply, ^ref, :done} ->
        Enum.reverse(acc)

      {:snakepit_reply, ^ref, other} ->
        flunk("stream ended #{inspect(other)}")
    after
      10_000 -> flunk("stream stalled")
    end
  end

  test "cancel a stream and a unary call", %{workers: w} do
    p = pool(w)
    ref = make_ref()

    {:ok, id} =
      N.pool_submit(p, ref, "infinite_stream", %{delay_ms: 10}, %{stream: true, stream_window: 4})

    assert_receive {:snakepit_chunk, ^ref, _, false, _}, 5_000
    :ok = N.pool_cancel(p, id)
    flush(ref)
    refute_receive {:snakepit_chunk, ^ref, _, _, _}, 300
    wait_idle(p)
    {_, {:ok, _}} = call(p, "ping", %{})
  end

  test "caller death cancels", %{workers: w} do
    p = pool(w)

    pid =
      spawn(fn ->
        {:ok, _} = N.pool_submit(p, make_ref(), "sleep_task", %{duration_ms: 300}, %{})
        Process.sleep(50)
      end)

    Process.sleep(20)
    assert [%{load: 1}] = N.pool_workers(p)
    ref = Process.monitor(pid)
    assert_receive {:DOWN, ^ref, _, _, _}
    # Python still runs the call: the worker stays busy, then frees up.
    wait_idle(p)
    s = N.pool_stats(p)
    assert s.cancelled == 1
    assert s.monitored_callers == 0
  end

  test "deadline", %{workers: w} do
    p = pool(w)

    {_, {:error, {:grpc, :deadline_exceeded, _}}} =
      call(p, "sleep_task", %{duration_ms: 500}, %{timeout_ms: 100})

    wait_idle(p)
  end

  test "remove worker with in-flight", %{workers: w} do
    p = pool(w)
    ref = make_ref()
    {:ok, _} = N.pool_submit(p, ref, "sleep_task", %{duration_ms: 1000}, %{})
    Process.sleep(50)
    :ok = N.pool_remove_worker(p, "w1", {:exit_status, 139})

    assert_receive {:snakepit_reply, ^ref, {:error, {:worker_exit, "w1", {:exit_status, 139}}}},
                   1_000

    assert N.pool_workers(p) == []
    :ok = N.pool_remove_worker(p, "w1", :again)
  end

  test "sessions, queueing, close, recycle", %{workers: w} do
    p = pool(w, %{abandon_grace_ms: 50}, 2)
    {_, {:ok, _}} = call(p, "ping", %{}, %{session_id: "s1"})
    sw = N.pool_session_worker(p, "s1")
    assert sw in ["w1", "w2"]
    {_, {:ok, _}} = call(p, "ping", %{}, %{session_id: "s1", affinity: :strict_queue})
    assert N.pool_session_worker(p, "s1") == sw
    :ok = N.pool_delete_session(p, "s1")
    assert N.pool_session_worker(p, "s1") == nil
    # Abandon a call: the owner hears about recycling.
    ref = make_ref()
    {:ok, id} = N.pool_submit(p, ref, "sleep_task", %{duration_ms: 400}, %{})
    Process.sleep(30)
    :ok = N.pool_cancel(p, id)
    assert_receive {:snakepit_pool_event, {:recycle_worker, wid}}, 1_000
    assert wid in ["w1", "w2"]
    # Queue then close.
    refs =
      for _ <- 1..3,
          do:
            (
              r = make_ref()
              {:ok, _} = N.pool_submit(p, r, "sleep_task", %{duration_ms: 300}, %{})
              r
            )

    :ok = N.pool_close(p)

    closed =
      for r <- refs, reduce: 0 do
        acc ->
          receive do
            {:snakepit_reply, ^r, {:error, {:pool, :pool_closed}}} -> acc + 1
            {:snakepit_reply, ^r, {:ok, _}} -> acc
          after
            3_000 -> flunk("no reply")
          end
      end

    assert closed >= 1
    assert {:error, {:pool, :pool_closed}} = N.pool_submit(p, make_ref(), "ping", %{}, %{})
    wait_idle(p)
  end

  test "a crash mid-call reaches the caller with the exit status", %{dir: dir} do
    {id, ep, port} = start_worker(dir, "seg")
    p = N.pool_new(%{name: "crash"}, self())
    :ok = N.pool_add_worker(p, id, ep, 1)
    ref = make_ref()
    {:ok, _} = N.pool_submit(p, ref, "segfault", %{}, %{})
    status = await_exit(port)
    t0 = System.monotonic_time(:millisecond)
    :ok = N.pool_remove_worker(p, id, {:exit_status, status})

    assert_receive {:snakepit_reply, ^ref, {:error, {:worker_exit, "seg", {:exit_status, ^status}}}},
                   500

    assert System.monotonic_time(:millisecond) - t0 < 500
    assert status == 139
    refute_receive {:snakepit_reply, ^ref, _}, 100
  end

  test "without a verdict a crash gives the gRPC error after the window", %{dir: dir} do
    {id, ep, port} = start_worker(dir, "exit3")
    p = N.pool_new(%{name: "crash2", crash_verdict_ms: 100}, self())
    :ok = N.pool_add_worker(p, id, ep, 1)
    ref = make_ref()
    {:ok, _} = N.pool_submit(p, ref, "crash", %{code: 3}, %{})
    assert await_exit(port) == 3
    assert_receive {:snakepit_reply, ^ref, {:error, {:grpc, code, _}}}, 1_000
    assert code in [:unavailable, :unknown, :internal, :cancelled]
  end

  test "an idempotent call is retried on another worker", %{dir: dir} do
    {id, ep, port} = start_worker(dir, "r1")
    {id2, ep2, _} = start_worker(dir, "r2")
    p = N.pool_new(%{name: "retry"}, self())
    :ok = N.pool_add_worker(p, id, ep, 1)
    ref = make_ref()
    {:ok, _} = N.pool_submit(p, ref, "sleep_ms", %{ms: 500}, %{retry_on_crash: 1})
    Process.sleep(150)
    :ok = N.pool_add_worker(p, id2, ep2, 1)
    {:os_pid, os_pid} = Port.info(port, :os_pid)
    System.cmd("kill", ["-9", Integer.to_string(os_pid)])
    status = await_exit(port)
    :ok = N.pool_remove_worker(p, id, {:exit_status, status})
    assert_receive {:snakepit_reply, ^ref, {:ok, %{"slept_ms" => 500}}}, 3_000
    refute_receive {:snakepit_reply, ^ref, _}, 100
    assert %{retries: 1, awaiting_reply: 0} = N.pool_stats(p)
  end

  test "oversized, deep and malformed arguments are refused cheaply", %{workers: w} do
    p = pool(w)
    big = :binary.copy("a", 200 * 1024 * 1024)
    {us, r} = :timer.tc(fn -> N.pool_submit(p, make_ref(), "echo", %{blob: big}, %{}) end)
    assert {:error, {:invalid_parameter, "blob", msg}} = r
    assert msg =~ "exceeds max_message_bytes"
    assert us < 50_000

    assert {:error, {:invalid_parameter, "binary_parameters.raw", _}} =
             N.pool_submit(p, make_ref(), "echo", %{}, %{binary_parameters: %{"raw" => big}})

    small = pool(w, %{max_message_bytes: 1000})
    xs = Enum.to_list(1..1000)

    assert {:error, {:invalid_parameter, "xs[" <> _, _}} =
             N.pool_submit(small, make_ref(), "echo", %{xs: xs}, %{})

    # Escaping grows this to 1802 bytes of JSON.
    assert {:error, {:invalid_parameter, "s", _}} =
             N.pool_submit(small, make_ref(), "echo", %{s: String.duplicate(<<1>>, 300)}, %{})

    deep = Enum.reduce(1..200, 1, fn _, acc -> [acc] end)
    assert {:error, {:invalid_parameter, _, msg}} = N.pool_submit(p, make_ref(), "echo", %{d: deep}, %{})
    assert msg =~ "nested deeper"
    ok_deep = Enum.reduce(1..100, 1, fn _, acc -> [acc] end)
    {_, {:ok, _}} = call(p, "echo", %{d: ok_deep})

    assert {:error, {:invalid_parameter, _, msg}} =
             N.pool_submit(p, make_ref(), "echo", %{<<255>> => 1}, %{})

    assert msg =~ "UTF-8"

    assert {:error, {:invalid_parameter, "a." <> _, msg}} =
             N.pool_submit(p, make_ref(), "echo", %{a: %{<<0xFF, 0xFE>> => 1}}, %{})

    assert msg =~ "UTF-8"
    assert_raise ErlangError, fn -> N.pool_new(%{crash_verdict_ms: 100_000}, self()) end

    assert_raise ErlangError, fn ->
      N.pool_submit(p, make_ref(), "echo", %{}, %{retry_on_crash: -1})
    end
  end

  test "throughput", %{workers: w} do
    p = pool(w, %{}, 2)
    t0 = System.monotonic_time(:microsecond)
    n = 500
    tasks = for i <- 1..n, do: Task.async(fn -> call(p, "lightweight_task", %{iteration: i}) end)
    results = Task.await_many(tasks, 30_000)
    dt = System.monotonic_time(:microsecond) - t0
    assert Enum.all?(results, &match?({_, {:ok, _}}, &1))
    IO.puts("#{n} calls in #{div(dt, 1000)} ms (#{Float.round(n / (dt / 1.0e6), 1)}/s)")
    seq_t0 = System.monotonic_time(:microsecond)
    for i <- 1..200, do: {_, {:ok, _}} = call(p, "lightweight_task", %{iteration: i})
    IO.puts("sequential: #{div(System.monotonic_time(:microsecond) - seq_t0, 200)} us/call")
    Process.sleep(100)
    assert N.pool_stats(p).monitored_callers == 0
  end

  defp flush(ref) do
    receive do
      {:snakepit_chunk, ^ref, _, _, _} -> flush(ref)
      {:snakepit_reply, ^ref, _} -> flush(ref)
    after
      0 -> :ok
    end
  end

  defp wait_idle(p, n \\ 200) do
    if Enum.all?(N.pool_workers(p), &(&1.load == 0)) do
      :ok
    else
      if n == 0, do: flunk("worker still busy: #{inspect(N.pool_workers(p))}")
      Process.sleep(10)
      wait_idle(p, n - 1)
    end
  end
end
