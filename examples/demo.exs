# The main demo: stateful Python objects pinned to sessions, under load.
#
#   ./scripts/demo            (provisions, then runs `mix run --no-start examples/demo.exs`)
#
# Four Python workers run `examples/python/digits_demo_adapter.py`. Each of 32 sessions fits a
# small scikit-learn classifier on the digits dataset that ships with scikit-learn; the model stays
# in the memory of the worker process that fitted it, and the session gets back a reference. The
# session then asks for 20 predictions against that reference, with all 32 sessions running at
# once. A prediction that lands on another worker fails with `KeyError: Unknown reference`.
#
# The same workload runs under the three affinity modes (per-call `affinity:` option):
#
#   :hint              prefer the session's worker, but take any free worker when it is busy
#   :strict_queue      always the session's worker; wait in line when it is busy
#   :strict_fail_fast  always the session's worker; answer :worker_busy at once when it is busy
#                      (this demo retries after a short backoff and counts the retries)
#
# Exits with status 1 if a strict mode saw any "Unknown reference" error.

defmodule Demo do
  @pool_size 4
  @sessions 32
  @predictions 20
  @concurrency 32
  @train_size 500
  @call_timeout 30_000
  @busy_backoff_ms 2
  @busy_max_retries 2_000
  @modes [:hint, :strict_queue, :strict_fail_fast]

  def main do
    Logger.configure(level: :warning)
    configure()

    IO.puts("""

    Snakepit demo: stateful scikit-learn models pinned to sessions, under load
    ==========================================================================
    """)

    started = System.monotonic_time(:millisecond)
    {:ok, _} = Application.ensure_all_started(:snakepit)
    :ok = await_workers(@pool_size, 60_000)
    ready_ms = System.monotonic_time(:millisecond) - started

    print_workers(ready_ms)
    warm_up()

    IO.puts("""

    Workload per mode: #{@sessions} sessions x (1 fit + #{@predictions} predictions) = \
    #{@sessions * (@predictions + 1)} calls,
    #{@concurrency} concurrent callers, #{@pool_size} workers. Model: LogisticRegression on a seeded
    #{@train_size}-image split of sklearn's digits dataset (1797 8x8 images); predictions use held-out images.
    """)

    results = Enum.map(@modes, fn mode -> {mode, run_mode(mode)} end)

    print_table(results)
    status = verdict(results)

    Application.stop(:snakepit)
    System.halt(status)
  end

  # -- setup -------------------------------------------------------------------------------------

  defp configure do
    examples_python = Path.expand("python", __DIR__)

    Application.put_env(:snakepit, :pooling_enabled, true)

    Application.put_env(:snakepit, :pools, [
      %{
        name: :default,
        pool_size: @pool_size,
        affinity: :hint,
        adapter_args: ["--adapter", "digits_demo_adapter.DigitsDemoAdapter"],
        # Prepended to the worker's PYTHONPATH (after snakepit's own priv/python).
        adapter_env: %{"PYTHONPATH" => examples_python}
      }
    ])
  end

  # `await_ready` returns once every pool has one ready worker; the demo wants all of them.
  defp await_workers(n, timeout_ms) do
    case Snakepit.Pool.await_ready(Snakepit.Pool, timeout_ms) do
      :ok ->
        deadline = System.monotonic_time(:millisecond) + timeout_ms
        wait_for(n, deadline)

      {:error, error} ->
        IO.puts(:stderr, "pool failed to start:\n#{error}")
        System.halt(2)
    end
  end

  defp wait_for(n, deadline) do
    cond do
      length(Snakepit.list_workers()) >= n ->
        :ok

      System.monotonic_time(:millisecond) > deadline ->
        IO.puts(:stderr, "only #{length(Snakepit.list_workers())} of #{n} workers became ready")
        System.halt(2)

      true ->
        Process.sleep(20)
        wait_for(n, deadline)
    end
  end

  defp print_workers(ready_ms) do
    workers = Enum.sort(Snakepit.list_workers())

    IO.puts(
      "BEAM OS pid #{System.pid()}; #{length(workers)} Python workers ready in #{ready_ms} ms:"
    )

    for id <- workers do
      IO.puts("  #{String.pad_trailing(id, 28)} OS pid #{Snakepit.Worker.os_pid(id)}")
    end
  end

  # One call per worker so the first measured calls do not pay for the dataset load.
  defp warm_up do
    for _ <- 1..(@pool_size * 2) do
      {:ok, _} = Snakepit.execute("stats", %{}, timeout: @call_timeout)
    end

    :ok
  end

  # -- workload ----------------------------------------------------------------------------------

  defp run_mode(mode) do
    IO.write("running #{inspect(mode)} ... ")
    started = System.monotonic_time(:microsecond)

    calls =
      1..@sessions
      |> Task.async_stream(fn s -> run_session(mode, s) end,
        max_concurrency: @concurrency,
        ordered: false,
        timeout: :infinity
      )
      |> Enum.flat_map(fn {:ok, calls} -> calls end)

    wall_us = System.monotonic_time(:microsecond) - started
    IO.puts("done in #{Float.round(wall_us / 1_000_000, 2)} s")
    summarize(calls, wall_us)
  end

  # One session: fit a model (kept in the serving worker's memory), then predict with it.
  defp run_session(mode, s) do
    session = "#{mode}-session-#{String.pad_leading(Integer.to_string(s), 2, "0")}"
    fit = call(mode, session, "fit", %{seed: s, train_size: @train_size})

    case fit do
      %{kind: :ok, value: %{"ref" => ref}} ->
        predictions =
          for i <- 1..@predictions do
            call(mode, session, "predict", %{ref: ref, index: s * 31 + i})
          end

        [fit | predictions]

      _ ->
        # Without a model there is nothing to predict with; count the skipped calls as such.
        [fit]
    end
  end

  defp call(mode, session, command, args, retries \\ 0, started \\ nil) do
    started = started || System.monotonic_time(:microsecond)

    result =
      Snakepit.execute_in_session(session, command, args,
        affinity: mode,
        timeout: @call_timeout
      )

    case classify(result) do
      :worker_busy when mode == :strict_fail_fast and retries < @busy_max_retries ->
        Process.sleep(@busy_backoff_ms)
        call(mode, session, command, args, retries + 1, started)

      kind ->
        %{
          command: command,
          kind: kind,
          value: if(kind == :ok, do: elem(result, 1)),
          error: if(kind != :ok, do: elem(result, 1)),
          retries: retries,
          latency_us: System.monotonic_time(:microsecond) - started
        }
    end
  end

  defp classify({:ok, _}), do: :ok

  defp classify({:error, %Snakepit.Error{details: details} = error}) do
    reason = Map.get(details, :reason)

    cond do
      reason == :worker_busy -> :worker_busy
      unknown_reference?(error, reason) -> :unknown_reference
      true -> :other
    end
  end

  defp classify({:error, _}), do: :other

  defp unknown_reference?(error, reason) do
    text = if is_exception(reason), do: Exception.message(reason), else: inspect(reason)
    String.contains?(error.message <> " " <> text, "Unknown reference")
  end

  # -- report ------------------------------------------------------------------------------------

  defp summarize(calls, wall_us) do
    count = fn kind -> Enum.count(calls, &(&1.kind == kind)) end
    predictions = Enum.filter(calls, &(&1.command == "predict" and &1.kind == :ok))
    correct = Enum.count(predictions, & &1.value["correct"])
    latencies = calls |> Enum.map(& &1.latency_us) |> Enum.sort()

    %{
      calls: length(calls),
      skipped: @sessions * (@predictions + 1) - length(calls),
      ok: count.(:ok),
      unknown_reference: count.(:unknown_reference),
      worker_busy: count.(:worker_busy),
      other: count.(:other),
      busy_retries: calls |> Enum.map(& &1.retries) |> Enum.sum(),
      p50_ms: percentile(latencies, 50) / 1000,
      p99_ms: percentile(latencies, 99) / 1000,
      throughput: length(calls) / (wall_us / 1_000_000),
      accuracy: if(predictions == [], do: nil, else: correct / length(predictions)),
      predictions_ok: length(predictions),
      sample_other: Enum.find_value(calls, &(&1.kind == :other and &1.error))
    }
  end

  defp percentile([], _p), do: 0

  defp percentile(sorted, p) do
    rank = max(ceil(p / 100 * length(sorted)), 1)
    Enum.at(sorted, rank - 1)
  end

  defp print_table(results) do
    header = [
      "mode",
      "calls",
      "ok",
      "unknown ref",
      "busy (retries)",
      "other err",
      "p50 ms",
      "p99 ms",
      "calls/s",
      "accuracy"
    ]

    rows =
      for {mode, r} <- results do
        [
          inspect(mode),
          r.calls,
          r.ok,
          r.unknown_reference,
          "#{r.worker_busy} (#{r.busy_retries})",
          r.other,
          fmt(r.p50_ms, 2),
          fmt(r.p99_ms, 2),
          fmt(r.throughput, 0),
          if(r.accuracy, do: "#{fmt(r.accuracy * 100, 1)}%", else: "-")
        ]
      end

    widths =
      Enum.zip_with([header | rows], fn column ->
        column |> Enum.map(&String.length(to_string(&1))) |> Enum.max()
      end)

    line = fn cells ->
      cells
      |> Enum.zip(widths)
      |> Enum.with_index()
      |> Enum.map_join("  ", fn
        {{cell, w}, 0} -> String.pad_trailing(to_string(cell), w)
        {{cell, w}, _} -> String.pad_leading(to_string(cell), w)
      end)
    end

    IO.puts("")
    IO.puts(line.(header))
    IO.puts(widths |> Enum.map(&String.duplicate("-", &1)) |> Enum.join("  "))
    Enum.each(rows, &IO.puts(line.(&1)))
    IO.puts("")
    IO.puts("latency is per call, end to end (fail-fast retries included); accuracy is over the")
    IO.puts("successful predictions, on images the session's model never saw.")

    for {mode, r} <- results, r.skipped > 0 do
      IO.puts(
        "#{inspect(mode)}: #{r.skipped} predictions skipped because their session's fit failed"
      )
    end

    for {mode, %{sample_other: %Snakepit.Error{} = e}} <- results do
      IO.puts(
        "#{inspect(mode)}: first other error: [#{e.category}] #{e.message} #{inspect(e.details[:reason])}"
      )
    end
  end

  defp fmt(x, 0), do: x |> round() |> Integer.to_string()
  defp fmt(x, digits), do: :erlang.float_to_binary(x / 1, decimals: digits)

  defp verdict(results) do
    IO.puts("")

    Enum.reduce(results, 0, fn {mode, r}, status ->
      case mode do
        :hint ->
          IO.puts(
            ":hint             #{r.unknown_reference} of #{r.calls} calls reached a worker that " <>
              "does not hold the session's model (affinity is only a preference under load)"
          )

          status

        _ when r.unknown_reference == 0 ->
          IO.puts(
            "#{String.pad_trailing(inspect(mode), 18)}OK: every call reached the worker " <>
              "holding its session's model (0 unknown references)"
          )

          status

        _ ->
          IO.puts(
            "#{String.pad_trailing(inspect(mode), 18)}FAIL: #{r.unknown_reference} unknown " <>
              "references under a strict mode"
          )

          1
      end
    end)
  end
end

Demo.main()
