defmodule Snakepit.Script do
  @moduledoc false
  # Snakepit.run_as_script/2 and Snakepit.cleanup/0.

  require Logger

  alias Snakepit.{Error, OsProcess}

  @spec run((() -> term()), keyword()) :: term()
  def run(fun, opts) do
    started_here? = Process.whereis(Snakepit.Supervisor) == nil

    case Application.ensure_all_started(:snakepit) do
      {:ok, _} -> :ok
      {:error, reason} -> raise RuntimeError, "Snakepit failed to start: #{inspect(reason)}"
    end

    await? =
      Keyword.get(opts, :await_pool, Application.get_env(:snakepit, :pooling_enabled, false))

    case if(await?,
           do: Snakepit.Pool.await_ready(Snakepit.Pool, Keyword.get(opts, :timeout, 15_000)),
           else: :ok
         ) do
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
    stop? =
      case Keyword.get(opts, :stop_mode, :if_started) do
        :always -> true
        :never -> false
        _ -> started_here?
      end

    if stop?, do: Application.stop(:snakepit)

    case exit_mode(opts, started_here?) do
      :halt -> System.halt(status)
      :stop -> System.stop(status)
      :none -> :ok
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
    pids = Snakepit.Worker.os_pids() |> Enum.filter(&OsProcess.alive?/1)
    Enum.each(pids, &OsProcess.kill(&1, "TERM"))
    deadline = System.monotonic_time(:millisecond) + 3_000

    survivors =
      Enum.reject(pids, fn pid ->
        OsProcess.await_exit(pid, max(deadline - System.monotonic_time(:millisecond), 0))
      end)

    Enum.each(survivors, &OsProcess.kill(&1, "KILL"))

    case Enum.filter(survivors, &(not OsProcess.await_exit(&1, 500))) do
      [] -> :ok
      alive -> {:timeout, alive}
    end
  end
end
