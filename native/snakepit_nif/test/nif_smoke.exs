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

    %{workers: workers}
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
