# Bench harness (issue #7). Run with `./scripts/bench` (provisions and builds first), or directly:
#
#   cargo build --release -p snakepit_bench_baseline
#   MIX_ENV=prod mix run --no-start bench/run.exs [--quick] [--no-scheduler] [--no-plot]
#
# Measures, on real Python workers (showcase adapter):
#   1. sequential `ping` latency (p50/p90/p99) after warm-up, against a baseline in the same run:
#      a plain tonic client in Rust (bench/baseline) calling Python workers of its own directly
#      (no scheduler, no BEAM). Both sides run in interleaved rounds so drift hits them alike;
#   2. throughput and latency at 1, 4, 16, 32, 64 concurrent callers, pool sizes 4 and 8
#      (baseline: the same levels through a minimal FIFO free list of the same worker count);
#   3. time from application start to all N workers ready, N = 4, 8, 32;
#   4. the session workload (64 sessions x 20 calls, concurrency 32, pool of 4) per affinity
#      mode, with the number of calls served off the session's worker;
#   5. the scheduler core micro-bench (`cargo bench -p snakepit_core --bench scheduler`).
#
# Writes bench/out/results.json and bench/out/latency_vs_concurrency.png (bench/plot.py,
# matplotlib from .venv) and prints a table. Not part of the test run.

defmodule Bench.Stats do
  @moduledoc false

  # Latency summary of samples in microseconds (floats), nearest-rank percentiles.
  def summary(samples_us, errors, wall_us) do
    sorted = Enum.sort(samples_us)
    n = length(sorted)

    %{
      calls: n,
      errors: errors,
      p50_us: pct(sorted, n, 50),
      p90_us: pct(sorted, n, 90),
      p99_us: pct(sorted, n, 99),
      mean_us: if(n > 0, do: Enum.sum(sorted) / n),
      min_us: List.first(sorted),
      max_us: List.last(sorted),
      wall_s: wall_us / 1_000_000,
      throughput_per_s: if(wall_us > 0, do: n / (wall_us / 1_000_000))
    }
  end

  def pct(_sorted, 0, _p), do: nil

  def pct(sorted, n, p) do
    rank = n |> Kernel.*(p / 100) |> Float.ceil() |> trunc() |> max(1) |> min(n)
    :lists.nth(rank, sorted)
  end
end

defmodule Bench.BaselineWorkers do
  @moduledoc false
  # Python workers started by the bench itself (not by Snakepit) for the baseline client:
  # `python -m snakepit_bridge.server` behind a Port, on sockets in a private 0700 directory.
  # Closing the Port closes the worker's stdin, which makes it exit.

  def start(n, python, priv_python) do
    dir =
      Path.join(System.tmp_dir!(), "snakepit-bench-#{System.pid()}-#{:rand.uniform(1_000_000)}")

    File.mkdir_p!(dir)
    File.chmod!(dir, 0o700)

    env =
      [
        {"PYTHONPATH", priv_python},
        {"PYTHONUNBUFFERED", "1"},
        {"OPENBLAS_NUM_THREADS", "1"},
        {"OMP_NUM_THREADS", "1"},
        {"MKL_NUM_THREADS", "1"},
        {"NUMEXPR_NUM_THREADS", "1"},
        # As Snakepit.Worker starts its workers (own process group, no .pyc writes), so both
        # sides run the same Python setup.
        {"SNAKEPIT_PROCESS_GROUP", "1"},
        {"PYTHONDONTWRITEBYTECODE", "1"}
      ]
      |> Enum.map(fn {k, v} -> {String.to_charlist(k), String.to_charlist(v)} end)

    ports =
      for i <- 1..n do
        socket = Path.join(dir, "b#{i}.sock")

        port =
          Port.open({:spawn_executable, python}, [
            :binary,
            :exit_status,
            {:line, 65_536},
            :use_stdio,
            :stderr_to_stdout,
            :hide,
            args: [
              "-u",
              "-m",
              "snakepit_bridge.server",
              "--adapter",
              "snakepit_bridge.adapters.showcase.ShowcaseAdapter",
              "--socket",
              socket,
              "--worker-id",
              "baseline_#{i}"
            ],
            env: env
          ])

        {port, socket}
      end

    endpoints = Enum.map(ports, fn {port, socket} -> await_ready(port, socket, []) end)
    %{dir: dir, ports: Enum.map(ports, &elem(&1, 0)), endpoints: endpoints}
  end

  defp await_ready(port, socket, tail) do
    receive do
      {^port, {:data, {:eol, "SNAKEPIT_READY " <> _}}} ->
        "unix:" <> socket

      {^port, {:data, {_, line}}} ->
        await_ready(port, socket, Enum.take([line | tail], 20))

      {^port, {:exit_status, status}} ->
        raise "baseline worker exited with #{status}:\n" <> Enum.join(Enum.reverse(tail), "\n")
    after
      60_000 -> raise "baseline worker not ready after 60 s"
    end
  end

  def stop(%{dir: dir, ports: ports}) do
    for port <- ports do
      try do
        Port.close(port)
      rescue
        ArgumentError -> :ok
      end
    end

    # Give them a moment to exit on stdin EOF before the sockets' directory goes.
    Process.sleep(200)
    File.rm_rf(dir)
    :ok
  end
end

defmodule Bench.Cpu do
  @moduledoc false
  # CPU time of a process, per thread group, from /proc (Linux): BEAM schedulers, the NIF's
  # tokio threads ("snakepit-tokio"), the baseline's tokio threads, other threads.

  def threads(os_pid) do
    tick = clock_ticks()
    dir = "/proc/#{os_pid}/task"

    case File.ls(dir) do
      {:ok, tids} ->
        Enum.reduce(tids, %{}, fn tid, acc ->
          with {:ok, comm} <- File.read("#{dir}/#{tid}/comm"),
               {:ok, stat} <- File.read("#{dir}/#{tid}/stat"),
               [_, rest] <- String.split(stat, ") ", parts: 2) do
            fields = String.split(rest)

            ticks =
              String.to_integer(Enum.at(fields, 11)) + String.to_integer(Enum.at(fields, 12))

            Map.update(
              acc,
              group(String.trim(comm)),
              ticks * 1.0e6 / tick,
              &(&1 + ticks * 1.0e6 / tick)
            )
          else
            _ -> acc
          end
        end)

      _ ->
        %{}
    end
  end

  # Microseconds of CPU per call, per group and in total, between two `threads/1` readings.
  def per_call(after_, before, calls) when calls > 0 do
    groups =
      Map.new(after_, fn {g, us} -> {g, (us - Map.get(before, g, 0.0)) / calls} end)
      |> Enum.reject(fn {_g, us} -> us <= 0 end)
      |> Map.new()

    Map.put(groups, "total", groups |> Map.values() |> Enum.sum())
  end

  def per_call(_after, _before, _calls), do: %{}

  defp group(comm) do
    cond do
      comm == "snakepit-tokio" -> "nif_tokio"
      String.ends_with?(comm, "_scheduler") -> "beam_schedulers"
      String.contains?(comm, "dirty") -> "beam_dirty"
      String.starts_with?(comm, "tokio-runtime") -> "tokio"
      true -> "other"
    end
  end

  defp clock_ticks do
    case :persistent_term.get({__MODULE__, :tick}, nil) do
      nil ->
        tick =
          case System.cmd("getconf", ["CLK_TCK"], stderr_to_stdout: true) do
            {out, 0} -> out |> String.trim() |> String.to_integer()
            _ -> 100
          end

        :persistent_term.put({__MODULE__, :tick}, tick)
        tick

      tick ->
        tick
    end
  end
end

defmodule Bench do
  @moduledoc false

  alias Bench.Stats

  @root Path.expand("..", __DIR__)
  @out Path.join(__DIR__, "out")
  @showcase "snakepit_bridge.adapters.showcase.ShowcaseAdapter"
  @levels [1, 4, 16, 32, 64]
  @pool_sizes [4, 8]
  @startup_sizes [4, 8, 32]
  @modes [:hint, :strict_queue, :strict_fail_fast]
  @target_p50_us 10.0
  @target_p99_us 50.0

  def main(argv) do
    quick? = "--quick" in argv
    Logger.configure(level: :error)
    File.mkdir_p!(@out)

    p =
      if quick?,
        do: %{warmup: 100, seq_rounds: 20, seq_per_round: 50, level_calls: 600, sessions: 32},
        else: %{warmup: 300, seq_rounds: 40, seq_per_round: 50, level_calls: 2000, sessions: 64}

    started = System.monotonic_time(:millisecond)

    log(
      "Snakepit bench#{if quick?, do: " (--quick: fewer samples)"} on #{machine()}, load average #{load_average()}"
    )

    baseline_bin = baseline_binary()
    python = python_executable()

    log("starting #{Enum.max(@pool_sizes)} baseline Python workers")

    bw =
      Bench.BaselineWorkers.start(
        Enum.max(@pool_sizes),
        python,
        Path.join([@root, "priv", "python"])
      )

    {sequential, concurrency} =
      try do
        run_ping_benches(p, baseline_bin, bw)
      after
        Bench.BaselineWorkers.stop(bw)
      end

    sessions = run_session_workload(p)
    startup = run_startup()

    scheduler = if "--no-scheduler" in argv, do: %{skipped: true}, else: run_scheduler_bench()

    results = %{
      meta: %{
        machine: machine(),
        otp: System.otp_release(),
        elixir: System.version(),
        mix_env: to_string(Mix.env()),
        schedulers: System.schedulers_online(),
        erl_options: System.get_env("ELIXIR_ERL_OPTIONS"),
        erl_flags: System.get_env("ERL_FLAGS"),
        load_average_at_start: load_average(),
        quick: quick?,
        python: python,
        adapter: @showcase,
        sequential_calls: p.seq_rounds * p.seq_per_round,
        sequential_rounds: p.seq_rounds,
        warmup_calls: p.warmup,
        calls_per_level: p.level_calls,
        targets: %{overhead_p50_us: @target_p50_us, overhead_p99_us: @target_p99_us},
        generated_at: DateTime.utc_now() |> DateTime.to_iso8601(),
        duration_s: (System.monotonic_time(:millisecond) - started) / 1000
      },
      sequential: sequential,
      concurrency: concurrency,
      startup: startup,
      sessions: sessions,
      scheduler: scheduler
    }

    json_path = Path.join(@out, "results.json")
    {:ok, json} = Snakepit.JSON.encode(results, pretty: true)
    File.write!(json_path, json <> "\n")

    png_path = Path.join(@out, "latency_vs_concurrency.png")
    plot = if "--no-plot" in argv, do: :skipped, else: plot(python, json_path, png_path)

    print_report(results)
    IO.puts("\nwrote #{Path.relative_to(json_path, @root)}")

    case plot do
      :ok -> IO.puts("wrote #{Path.relative_to(png_path, @root)}")
      :skipped -> :ok
      {:error, message} -> IO.puts("plot failed: #{message}")
    end

    IO.puts(
      "total bench time #{Float.round((System.monotonic_time(:millisecond) - started) / 1000, 1)} s"
    )
  end

  # -- 1 + 2: ping, ours vs baseline ---------------------------------------------------------

  defp run_ping_benches(p, baseline_bin, bw) do
    [first_size | _] = @pool_sizes

    results =
      for size <- @pool_sizes do
        log("pool of #{size}: starting")
        start_app([pool(:default, size, :hint)], size)
        endpoints = Enum.take(bw.endpoints, size)
        ping = fn -> Snakepit.execute("ping", %{}, timeout: 30_000) end

        for _ <- 1..p.warmup, do: {:ok, _} = ping.()
        server = baseline_server(baseline_bin, endpoints, p.warmup)
        {:os_pid, base_os_pid} = Port.info(server, :os_pid)

        try do
          sequential =
            if size == first_size do
              log("pool of #{size}: sequential ping, #{p.seq_rounds} interleaved rounds")
              sequential_rounds(p, ping, server, endpoints)
            end

          log("pool of #{size}: concurrency levels #{inspect(@levels)}, snakepit then baseline")

          rows =
            for c <- @levels do
              total = max(p.level_calls, c * 20)
              _ = run_level(c, c, ping)
              cpu0 = Bench.Cpu.threads(System.pid())
              o = run_level(c, total, ping)
              cpu = Bench.Cpu.threads(System.pid()) |> Bench.Cpu.per_call(cpu0, o.calls)
              o = Map.merge(o, %{concurrency: c, workers: size, cpu_us_per_call: cpu})

              _ = baseline_line(server, "level #{c} #{c}")
              bcpu0 = Bench.Cpu.threads(base_os_pid)
              b = baseline_line(server, "level #{c} #{total}")
              bcpu = Bench.Cpu.threads(base_os_pid) |> Bench.Cpu.per_call(bcpu0, b["calls"])
              b = Map.put(b, "cpu_us_per_call", bcpu)

              %{
                concurrency: c,
                snakepit: o,
                baseline: b,
                overhead_p50_us: diff(o.p50_us, b["p50_us"]),
                overhead_p99_us: diff(o.p99_us, b["p99_us"])
              }
            end

          {sequential, {"pool_#{size}", rows}}
        after
          Port.close(server)
          stop_app()
        end
      end

    sequential = results |> Enum.map(&elem(&1, 0)) |> Enum.find(& &1)
    concurrency = results |> Map.new(&elem(&1, 1))
    {sequential, concurrency}
  end

  # Sequential latency of four tiers in short rounds whose order rotates, so drift hits all
  # alike; the baseline client stays up in `--serve` mode so a round is only calls:
  #   snakepit  Snakepit.execute (Elixir -> NIF -> engine -> tonic -> Python)
  #   baseline  plain tonic client (a task on its tokio runtime) -> Python
  #   handoff   the same call spawned from a plain thread onto the runtime, reply sent back
  #   engine    the same call through snakepit_core::engine::Engine from a plain thread
  # Samples of all rounds are pooled per tier; the paired estimate of the p50 overhead is the
  # median over rounds of the per-round p50 difference (snakepit - baseline).
  @tiers [:snakepit, :baseline, :handoff, :engine]

  defp sequential_rounds(p, ping, server, endpoints) do
    n = p.seq_per_round

    run_tier = fn
      :snakepit -> sequential_samples(n, ping)
      :baseline -> baseline_cmd(server, "seq #{n}")
      :handoff -> baseline_cmd(server, "spawn #{n}")
      :engine -> baseline_cmd(server, "engine #{n}")
    end

    # The engine tier warms up on its first command.
    _ = baseline_cmd(server, "engine 1")

    rounds =
      for round <- 1..p.seq_rounds do
        k = rem(round, length(@tiers))
        order = Enum.drop(@tiers, k) ++ Enum.take(@tiers, k)
        Map.new(order, fn tier -> {tier, run_tier.(tier)} end)
      end

    workers = length(endpoints)

    tiers =
      Map.new(@tiers, fn tier ->
        samples = Enum.flat_map(rounds, & &1[tier])
        {tier, samples |> Stats.summary(0, sum(samples)) |> Map.put(:workers, workers)}
      end)

    base = tiers.baseline

    overhead_vs_baseline =
      Map.new(@tiers -- [:baseline], fn tier ->
        {tier,
         Map.new([:p50_us, :p90_us, :p99_us, :mean_us], fn k ->
           {k, %{us: diff(tiers[tier][k], base[k]), ratio: ratio(tiers[tier][k], base[k])}}
         end)}
      end)

    round_p50_diffs =
      for r <- rounds do
        p50(r.snakepit) - p50(r.baseline)
      end

    overhead = overhead_vs_baseline.snakepit

    %{
      calls: length(Enum.flat_map(rounds, & &1.snakepit)),
      rounds: p.seq_rounds,
      calls_per_round: n,
      snakepit: tiers.snakepit,
      baseline: base,
      handoff: tiers.handoff,
      engine: tiers.engine,
      overhead: overhead,
      overhead_by_tier: overhead_vs_baseline,
      overhead_p50_paired_us: p50(round_p50_diffs),
      round_p50_diffs_us: round_p50_diffs,
      target_met: %{
        p50: overhead.p50_us.us <= @target_p50_us,
        p99: overhead.p99_us.us <= @target_p99_us
      }
    }
  end

  defp p50(samples), do: Stats.pct(Enum.sort(samples), length(samples), 50)

  defp baseline_server(bin, endpoints, warmup) do
    port =
      Port.open({:spawn_executable, bin}, [
        :binary,
        :exit_status,
        {:line, 16_000_000},
        args: [
          "--endpoints",
          Enum.join(endpoints, ","),
          "--tool",
          "ping",
          "--warmup",
          to_string(warmup),
          "--quiet",
          "--serve"
        ]
      ])

    receive do
      {^port, {:data, {:eol, "ready"}}} -> port
      {^port, {:exit_status, status}} -> raise "baseline exited with #{status}"
    after
      60_000 -> raise "baseline not ready after 60 s"
    end
  end

  # One command to the `--serve` baseline, its JSON answer decoded.
  defp baseline_line(port, command) do
    Port.command(port, command <> "\n")

    receive do
      {^port, {:data, {:eol, line}}} ->
        case Snakepit.JSON.decode(line) do
          {:ok, %{"errors" => 0} = answer} -> answer
          other -> raise "baseline #{command}: #{inspect(other)}"
        end

      {^port, {:exit_status, status}} ->
        raise "baseline exited with #{status}"
    after
      120_000 -> raise "baseline did not answer #{inspect(command)}"
    end
  end

  defp baseline_cmd(port, command), do: baseline_line(port, command)["samples_us"]

  defp sequential_samples(n, fun) do
    for _ <- 1..n do
      t = System.monotonic_time()
      {:ok, _} = fun.()
      us(System.monotonic_time() - t)
    end
  end

  # `total` calls spread over `callers` processes that share a countdown (like the baseline).
  defp run_level(callers, total, fun) do
    counter = :atomics.new(1, signed: true)
    :atomics.put(counter, 1, total)
    t0 = System.monotonic_time()

    results =
      1..callers
      |> Enum.map(fn _ -> Task.async(fn -> caller_loop(counter, fun, [], 0) end) end)
      |> Task.await_many(:infinity)

    wall = us(System.monotonic_time() - t0)
    samples = Enum.flat_map(results, &elem(&1, 0))
    errors = results |> Enum.map(&elem(&1, 1)) |> Enum.sum()
    Stats.summary(samples, errors, wall)
  end

  defp caller_loop(counter, fun, acc, errors) do
    if :atomics.sub_get(counter, 1, 1) >= 0 do
      t = System.monotonic_time()
      result = fun.()
      dt = us(System.monotonic_time() - t)

      case result do
        {:ok, _} -> caller_loop(counter, fun, [dt | acc], errors)
        _ -> caller_loop(counter, fun, acc, errors + 1)
      end
    else
      {acc, errors}
    end
  end

  # -- 3: startup --------------------------------------------------------------------------------

  defp run_startup do
    for n <- @startup_sizes do
      log("startup: pool of #{n}")
      t0 = System.monotonic_time()
      {:ok, _} = configure_and_start([pool(:default, n, :hint)])
      :ok = Snakepit.Pool.await_ready(Snakepit.Pool, 120_000)
      first = us(System.monotonic_time() - t0) / 1000
      :ok = wait_for_workers(n, 120_000)
      all = us(System.monotonic_time() - t0) / 1000
      stop_app()
      %{workers: n, first_ready_ms: first, all_ready_ms: all}
    end
  end

  # -- 4: session workload -----------------------------------------------------------------------

  defp run_session_workload(p) do
    size = 4
    calls_per_session = 20

    log(
      "session workload: #{p.sessions} sessions x #{calls_per_session} calls, concurrency 32, pool of #{size}"
    )

    start_app([pool(:default, size, :hint)], size)

    rows =
      for mode <- @modes do
        t0 = System.monotonic_time()

        per_session =
          1..p.sessions
          |> Task.async_stream(
            fn s -> session_calls(mode, "bench-#{mode}-#{s}", calls_per_session) end,
            max_concurrency: 32,
            ordered: false,
            timeout: :infinity
          )
          |> Enum.map(fn {:ok, r} -> r end)

        wall = us(System.monotonic_time() - t0)
        calls = Enum.flat_map(per_session, & &1)
        oks = Enum.filter(calls, &(&1.kind == :ok))
        summary = Stats.summary(Enum.map(calls, & &1.latency_us), 0, wall)

        off =
          per_session
          |> Enum.map(fn calls ->
            pids = for %{kind: :ok, pid: pid} <- calls, do: pid

            case pids do
              [] -> 0
              [home | rest] -> Enum.count(rest, &(&1 != home))
            end
          end)

        %{
          mode: mode,
          sessions: p.sessions,
          calls: length(calls),
          ok: length(oks),
          errors: length(calls) - length(oks),
          errors_by_kind:
            calls |> Enum.reject(&(&1.kind == :ok)) |> Enum.frequencies_by(& &1.kind),
          busy_rejections: calls |> Enum.map(& &1.rejections) |> Enum.sum(),
          off_worker_calls: Enum.sum(off),
          sessions_moved: Enum.count(off, &(&1 > 0)),
          p50_us: summary.p50_us,
          p99_us: summary.p99_us,
          throughput_per_s: summary.throughput_per_s
        }
      end

    stop_app()
    %{pool_size: size, concurrency: 32, calls_per_session: calls_per_session, modes: rows}
  end

  defp session_calls(mode, session, n) do
    for i <- 1..n do
      t = System.monotonic_time()
      {result, rejections} = session_call(mode, session, i, 0)
      latency = us(System.monotonic_time() - t)

      case result do
        {:ok, %{"worker_pid" => pid}} ->
          %{kind: :ok, pid: pid, latency_us: latency, rejections: rejections}

        {:error, %Snakepit.Error{details: %{reason: reason}}} when is_atom(reason) ->
          %{kind: reason, pid: nil, latency_us: latency, rejections: rejections}

        {:error, _} ->
          %{kind: :other, pid: nil, latency_us: latency, rejections: rejections}
      end
    end
  end

  # :strict_fail_fast answers :worker_busy at once when the session's worker is busy; retry
  # after a short backoff (bounded) and count the rejections.
  defp session_call(mode, session, i, rejections) do
    result =
      Snakepit.execute_in_session(session, "get_worker_info", %{call_number: i},
        affinity: mode,
        timeout: 30_000
      )

    case result do
      {:error, %Snakepit.Error{details: %{reason: :worker_busy}}} when rejections < 5_000 ->
        Process.sleep(1)
        session_call(mode, session, i, rejections + 1)

      _ ->
        {result, rejections}
    end
  end

  # -- 5: scheduler core micro-bench -------------------------------------------------------------

  defp run_scheduler_bench do
    log("scheduler core: cargo bench -p snakepit_core --bench scheduler -- --summary-only")
    t0 = System.monotonic_time(:millisecond)

    {out, status} =
      System.cmd(
        "cargo",
        ["bench", "-q", "-p", "snakepit_core", "--bench", "scheduler", "--", "--summary-only"],
        cd: @root,
        stderr_to_stdout: true
      )

    scenarios =
      for line <- String.split(out, "\n"),
          [_, name, rate] <- [Regex.run(~r/^\s+(\S+)\s+([\d.]+)\s+M cycles\/s/, line)] do
        %{scenario: name, cycles_per_s: String.to_float(rate) * 1.0e6}
      end

    %{
      command: "cargo bench -p snakepit_core --bench scheduler -- --summary-only",
      exit_status: status,
      duration_s: (System.monotonic_time(:millisecond) - t0) / 1000,
      scenarios: scenarios,
      output_tail:
        if(status != 0 or scenarios == [],
          do: out |> String.split("\n") |> Enum.take(-30) |> Enum.join("\n")
        )
    }
  end

  # -- plot --------------------------------------------------------------------------------------

  defp plot(python, json_path, png_path) do
    case System.cmd(python, [Path.join(__DIR__, "plot.py"), json_path, png_path],
           stderr_to_stdout: true
         ) do
      {_, 0} -> :ok
      {out, status} -> {:error, "exit #{status}: #{String.trim(out)}"}
    end
  end

  # -- app control -------------------------------------------------------------------------------

  defp pool(name, size, affinity) do
    %{name: name, pool_size: size, affinity: affinity, adapter_args: ["--adapter", @showcase]}
  end

  defp configure_and_start(pools) do
    Application.put_env(:snakepit, :pooling_enabled, true)
    Application.put_env(:snakepit, :pools, pools)
    Application.ensure_all_started(:snakepit)
  end

  defp start_app(pools, workers) do
    {:ok, _} = configure_and_start(pools)
    :ok = Snakepit.Pool.await_ready(Snakepit.Pool, 120_000)
    :ok = wait_for_workers(workers, 120_000)
  end

  defp wait_for_workers(n, timeout_ms) do
    deadline = System.monotonic_time(:millisecond) + timeout_ms
    do_wait(n, deadline)
  end

  defp do_wait(n, deadline) do
    cond do
      length(Snakepit.list_workers()) >= n -> :ok
      System.monotonic_time(:millisecond) > deadline -> {:error, :timeout}
      true -> Process.sleep(2) && do_wait(n, deadline)
    end
  end

  defp stop_app do
    :ok = Application.stop(:snakepit)
    # Let the workers' OS processes finish exiting so they do not load the next measurement.
    Process.sleep(300)
  end

  # -- environment -------------------------------------------------------------------------------

  defp baseline_binary do
    bin = Path.join([@root, "target", "release", "snakepit_bench_baseline"])
    log("building the baseline client (cargo build --release -p snakepit_bench_baseline)")

    case System.cmd("cargo", ["build", "--release", "-q", "-p", "snakepit_bench_baseline"],
           cd: @root,
           stderr_to_stdout: true
         ) do
      {_, 0} -> bin
      {out, status} -> raise "cannot build the baseline (exit #{status}):\n#{out}"
    end
  end

  defp load_average do
    case File.read("/proc/loadavg") do
      {:ok, text} -> text |> String.split() |> Enum.take(3) |> Enum.join(" ")
      _ -> nil
    end
  end

  defp python_executable do
    venv = Path.join([@root, ".venv", "bin", "python3"])
    if File.exists?(venv), do: venv, else: System.find_executable("python3")
  end

  defp machine do
    cpu =
      case File.read("/proc/cpuinfo") do
        {:ok, text} ->
          case Regex.run(~r/model name\s*:\s*(.+)/, text) do
            [_, name] -> String.trim(name)
            _ -> "unknown CPU"
          end

        _ ->
          "unknown CPU"
      end

    "#{System.schedulers_online()} cores, #{cpu}"
  end

  # -- report ------------------------------------------------------------------------------------

  defp print_report(r) do
    s = r.sequential

    IO.puts(
      "\nSnakepit bench: #{r.meta.machine}, OTP #{r.meta.otp}, MIX_ENV=#{r.meta.mix_env}, " <>
        "load average at start #{r.meta.load_average_at_start}" <>
        if(r.meta.quick, do: " (--quick: fewer samples)", else: "")
    )

    IO.puts("BEAM flags (ERL_FLAGS): #{r.meta.erl_flags || "none (the VM's defaults)"}")

    section(
      "Sequential ping: #{s.calls} calls per side after #{r.meta.warmup_calls} warm-up, " <>
        "#{s.rounds} interleaved rounds of #{s.calls_per_round}, pool of #{s.snakepit.workers}"
    )

    keys = [:p50_us, :p90_us, :p99_us, :mean_us]

    tier_row = fn label, t -> [label | row(t, keys)] ++ [f(t.throughput_per_s, 0)] end

    table(
      ["", "p50 us", "p90 us", "p99 us", "mean us", "calls/s"],
      [
        tier_row.("snakepit (Elixir -> NIF -> engine -> Python)", s.snakepit),
        tier_row.("baseline (plain tonic -> Python)", s.baseline),
        ["overhead vs baseline (us)" | Enum.map(keys, &signed(s.overhead[&1].us))] ++ [""],
        ["ratio snakepit / baseline" | Enum.map(keys, &"#{f(s.overhead[&1].ratio, 3)}x")] ++ [""],
        tier_row.("  split: thread hand-off only", s.handoff),
        tier_row.("  split: core engine from a thread", s.engine)
      ]
    )

    IO.puts(
      "split of the p50 overhead: thread hand-off #{signed(s.overhead_by_tier.handoff.p50_us.us)} us, " <>
        "engine #{signed(s.overhead_by_tier.engine.p50_us.us)} us (both incl. hand-off), " <>
        "BEAM + NIF + Elixir #{signed(diff(s.snakepit.p50_us, s.engine.p50_us))} us"
    )

    IO.puts(
      "overhead at p50, median of the #{s.rounds} per-round differences (paired): " <>
        "#{signed(s.overhead_p50_paired_us)} us"
    )

    IO.puts(
      "target: overhead <= #{f(@target_p50_us, 0)} us at p50: #{verdict(s.target_met.p50)}; " <>
        "<= #{f(@target_p99_us, 0)} us at p99: #{verdict(s.target_met.p99)}"
    )

    section(
      "Concurrency: ping, #{r.meta.calls_per_level} calls per level (at least 20 per caller)"
    )

    rows =
      for {pool, levels} <- Enum.sort_by(r.concurrency, fn {k, _} -> pool_size(k) end),
          l <- levels do
        o = l.snakepit
        b = l.baseline
        ocpu = o.cpu_us_per_call
        bcpu = b["cpu_us_per_call"] || %{}

        [
          pool_size(pool),
          l.concurrency,
          f(o.p50_us, 0),
          f(o.p99_us, 0),
          f(o.throughput_per_s, 0),
          f(b["p50_us"], 0),
          f(b["p99_us"], 0),
          f(b["throughput_per_s"], 0),
          signed(l.overhead_p50_us),
          "#{f(ocpu["total"], 0)} (#{f(ocpu["beam_schedulers"], 0)}/#{f(ocpu["nif_tokio"], 0)})",
          f(bcpu["total"], 0),
          o.errors + (b["errors"] || 0)
        ]
      end

    table(
      [
        "pool",
        "callers",
        "p50 us",
        "p99 us",
        "calls/s",
        "base p50",
        "base p99",
        "base calls/s",
        "d p50",
        "cpu us/call (sched/tokio)",
        "base cpu us/call",
        "errors"
      ],
      rows
    )

    IO.puts(
      "cpu us/call: CPU time of the BEAM process per call (BEAM schedulers / the NIF's tokio " <>
        "threads); base: of the baseline process. Python's share is the same on both sides."
    )

    section("Startup: application start -> workers ready (showcase adapter)")

    table(
      ["workers", "first ready ms", "all ready ms"],
      for(x <- r.startup, do: [x.workers, f(x.first_ready_ms, 0), f(x.all_ready_ms, 0)])
    )

    ss = r.sessions

    section(
      "Session workload: #{hd(ss.modes).sessions} sessions x #{ss.calls_per_session} calls, " <>
        "concurrency #{ss.concurrency}, pool of #{ss.pool_size}"
    )

    table(
      [
        "mode",
        "calls",
        "ok",
        "errors",
        "busy rejections",
        "off-worker calls",
        "sessions moved",
        "p50 us",
        "p99 us",
        "calls/s"
      ],
      for m <- ss.modes do
        [
          inspect(m.mode),
          m.calls,
          m.ok,
          if(m.errors == 0, do: "0", else: "#{m.errors} #{inspect(m.errors_by_kind)}"),
          m.busy_rejections,
          m.off_worker_calls,
          m.sessions_moved,
          f(m.p50_us, 0),
          f(m.p99_us, 0),
          f(m.throughput_per_s, 0)
        ]
      end
    )

    section("Scheduler core (submit -> dispatch -> complete, one thread)")

    case r.scheduler do
      %{skipped: true} ->
        IO.puts("skipped (--no-scheduler)")

      %{scenarios: [_ | _] = scenarios} ->
        table(
          ["scenario", "M cycles/s", "ns/cycle"],
          for(
            x <- scenarios,
            do: [x.scenario, f(x.cycles_per_s / 1.0e6, 2), f(1.0e9 / x.cycles_per_s, 0)]
          )
        )

      other ->
        IO.puts("cargo bench failed (exit #{other.exit_status}):\n#{other.output_tail}")
    end
  end

  defp section(title), do: IO.puts("\n== #{title} ==")

  defp table(header, rows) do
    all = [header | Enum.map(rows, fn row -> Enum.map(row, &to_string/1) end)]

    widths = Enum.zip_with(all, fn col -> col |> Enum.map(&String.length/1) |> Enum.max() end)

    line = fn cells ->
      cells
      |> Enum.zip(widths)
      |> Enum.with_index()
      |> Enum.map_join("  ", fn
        {{c, w}, 0} -> String.pad_trailing(c, w)
        {{c, w}, _} -> String.pad_leading(c, w)
      end)
    end

    IO.puts(line.(hd(all)))
    IO.puts(Enum.map_join(widths, "  ", &String.duplicate("-", &1)))
    Enum.each(tl(all), &IO.puts(line.(&1)))
  end

  defp row(map, keys), do: Enum.map(keys, &f(map[&1], 1))

  defp pool_size(key), do: key |> String.replace("pool_", "") |> String.to_integer()

  defp f(nil, _), do: "-"
  defp f(x, 0), do: x |> round() |> Integer.to_string()
  defp f(x, d), do: :erlang.float_to_binary(x / 1, decimals: d)

  defp signed(nil), do: "-"
  defp signed(x) when x >= 0, do: "+" <> f(x, 1)
  defp signed(x), do: f(x, 1)

  defp verdict(true), do: "PASS"
  defp verdict(false), do: "FAIL"

  defp diff(a, b) when is_number(a) and is_number(b), do: a - b
  defp diff(_, _), do: nil

  defp ratio(a, b) when is_number(a) and is_number(b) and b > 0, do: a / b
  defp ratio(_, _), do: nil

  defp sum(list), do: Enum.sum(list)

  defp us(native), do: System.convert_time_unit(native, :native, :nanosecond) / 1000

  defp log(message), do: IO.puts(:stderr, "[bench] #{message}")
end

Bench.main(System.argv())
