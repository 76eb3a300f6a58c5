defmodule Snakepit.Script do
  @moduledoc false
  # Snakepit.run_as_script/2 and Snakepit.cleanup/0 (contract §2.1.1).
  #
  # run/2: start the application, await the pools (`:await_pool`, `:timeout`), run `fun`, then
  # shut down per `:stop_mode` (bounded by `:shutdown_timeout`), kill any Python process of
  # this run that survived the stop (`:cleanup_timeout`, 0 disables), restart the application
  # when `:restart` says so, and finally exit the VM per `:exit_mode`.

  require Logger

  alias Snakepit.{Error, OsProcess}

  @kill_grace_ms 3_000

  @spec run((() -> term()), keyword()) :: term()
  def run(fun, opts) do
    started_here? = Process.whereis(Snakepit.Supervisor) == nil

    case Application.ensure_all_started(:snakepit) do
      {:ok, _} -> :ok
      {:error, reason} -> raise RuntimeError, "Snakepit failed to start: #{inspect(reason)}"
    end

    case await(opts) do
      :ok ->
        run_fun(fun, opts, started_here?)

      {:error, %Error{category: :timeout}} ->
        shutdown(opts, started_here?, 1)
        {:error, :pool_initialization_timeout}

      # Upstream hits a CaseClauseError here; report the pool's startup error instead.
      {:error, error} ->
        shutdown(opts, started_here?, 1)
        {:error, error}
    end
  end

  defp await(opts) do
    await? =
      Keyword.get(opts, :await_pool, Application.get_env(:snakepit, :pooling_enabled, false))

    if await?,
      do: Snakepit.Pool.await_ready(Snakepit.Pool, Keyword.get(opts, :timeout, 15_000)),
      else: :ok
  end

  defp run_fun(fun, opts, started_here?) do
    result =
      try do
        fun.()
      rescue
        exception ->
          shutdown(opts, started_here?, 1)
          reraise exception, __STACKTRACE__
      end

    shutdown(opts, started_here?, 0)
    result
  end

  defp shutdown(opts, started_here?, status) do
    stop_mode = Keyword.get(opts, :stop_mode, :if_started)

    stop? =
      case stop_mode do
        :always -> true
        :never -> false
        _ -> started_here?
      end

    if stop? do
      os_pids = Snakepit.Worker.os_pids()
      stop_application(Keyword.get(opts, :shutdown_timeout, 15_000))
      force_cleanup(os_pids, Keyword.get(opts, :cleanup_timeout, 5_000))
      if restart?(Keyword.get(opts, :restart, :auto), stop_mode), do: restart()
    end

    case exit_mode(opts, started_here?) do
      :halt -> System.halt(status)
      :stop -> System.stop(status)
      :none -> :ok
    end
  end

  defp stop_application(timeout) do
    task = Task.async(fn -> Application.stop(:snakepit) end)

    case Task.yield(task, timeout) || Task.ignore(task) do
      {:ok, _} ->
        :ok

      _ ->
        Logger.warning("Snakepit did not stop within #{timeout} ms (run_as_script)")
    end
  end

  # Workers stop their Python processes when the application stops; anything of this run still
  # alive afterwards is killed.
  defp force_cleanup(_os_pids, 0), do: :ok

  defp force_cleanup(os_pids, timeout) do
    case Enum.filter(os_pids, &OsProcess.alive?/1) do
      [] -> :ok
      alive -> kill_all(alive, timeout)
    end
  end

  # `:auto` restarts only after a forced stop inside a Mix project (e.g. a script run from
  # tests or a Mix task that keeps using Snakepit afterwards).
  defp restart?(true, _stop_mode), do: true
  defp restart?(:auto, :always), do: mix_project?()
  defp restart?(_, _stop_mode), do: false

  # Mix is not a runtime dependency (releases have no Mix): look it up dynamically.
  defp mix_project? do
    Code.ensure_loaded?(Mix.Project) and apply(Mix.Project, :get, []) != nil
  end

  defp restart do
    case Application.ensure_all_started(:snakepit) do
      {:ok, _} -> :ok
      {:error, reason} -> Logger.warning("Snakepit restart failed: #{inspect(reason)}")
    end
  end

  defp exit_mode(opts, started_here?) do
    legacy_halt =
      Keyword.get(opts, :halt, System.get_env("SNAKEPIT_SCRIPT_HALT") in ["1", "true"])

    mode =
      Keyword.get_lazy(opts, :exit_mode, fn ->
        case System.get_env("SNAKEPIT_SCRIPT_EXIT") do
          value when value in ["halt", "stop", "auto", "none"] -> String.to_atom(value)
          _ -> if legacy_halt, do: :halt, else: :none
        end
      end)

    case mode do
      :auto -> if started_here? and no_halt?(), do: :stop, else: :none
      mode when mode in [:halt, :stop, :none] -> mode
      _ -> :none
    end
  end

  # `mix run --no-halt` / `elixir --no-halt` keep the VM alive after the script.
  defp no_halt?, do: ~c"--no-halt" in :init.get_plain_arguments()

  @spec cleanup() :: :ok | {:timeout, [non_neg_integer()]}
  def cleanup do
    case Enum.filter(Snakepit.Worker.os_pids(), &OsProcess.alive?/1) do
      [] -> :ok
      pids -> kill_all(pids, @kill_grace_ms)
    end
  end

  # SIGTERM, wait up to `grace` ms, then SIGKILL the survivors (and their process trees).
  defp kill_all(pids, grace) do
    Enum.each(pids, &OsProcess.kill(&1, "TERM"))
    deadline = System.monotonic_time(:millisecond) + grace

    survivors =
      Enum.reject(pids, fn pid ->
        OsProcess.await_exit(pid, max(deadline - System.monotonic_time(:millisecond), 0))
      end)

    Enum.each(survivors, &OsProcess.kill_tree/1)

    case Enum.filter(survivors, &(not OsProcess.await_exit(&1, 500))) do
      [] -> :ok
      alive -> {:timeout, alive}
    end
  end
end
