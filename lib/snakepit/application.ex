defmodule Snakepit.Application do
  @moduledoc false
  # Supervision tree (Snakepit.Supervisor, :one_for_one):
  #
  #   Snakepit.Pool.Registry        Registry: pool / worker-supervisor names, worker id -> pid
  #   Snakepit.Bridge.SessionStore  ETS sessions
  #   per pool (only when pooling_enabled: true):
  #     Snakepit.Pool.Supervisor (:one_for_all)
  #       DynamicSupervisor         one Snakepit.Worker (Port owner) per Python process
  #       Snakepit.Pool             owner of the NIF pool resource
  #
  # The configuration is validated before anything starts; an invalid key makes the
  # application fail to start with a message naming it.
  #
  # Stopping: prep_stop/1 closes all pools (new calls are refused), then the pools wait up to
  # graceful_shutdown_timeout_ms from that moment for their running calls before their workers
  # are stopped.
  # Starting: the run directory is created first, which also cleans up after a previous BEAM
  # that was killed (Snakepit.ProcessRegistry).

  use Application

  require Logger

  alias Snakepit.{Config, PythonExecutable, RuntimeDir}

  @impl true
  def start(_type, _args) do
    with {:ok, config} <- load_config(),
         {:ok, config} <- resolve_python(config),
         :ok <- check_nif(config) do
      :persistent_term.put({Snakepit, :config}, config)

      Supervisor.start_link(children(config), strategy: :one_for_one, name: Snakepit.Supervisor)
    end
  end

  # Graceful stop: close every pool first, so that new calls are refused at once ("Pool is
  # closed") by all pools, and start one shutdown grace for all of them: the pools then drain
  # one after the other, each until that common deadline, so the stop takes one grace, not one
  # per pool.
  @impl true
  def prep_stop(state) do
    Snakepit.Pool.close_all()
    :persistent_term.put({Snakepit, :stopping_since}, System.monotonic_time(:millisecond))
    state
  end

  @doc false
  # What is left of a shutdown grace of `grace` ms: during an application stop it runs from the
  # moment prep_stop/1 closed every pool (shared by the pools' drains and their workers' exits),
  # otherwise it is all of it. Never negative.
  @spec grace_left(non_neg_integer()) :: non_neg_integer()
  def grace_left(grace) do
    case :persistent_term.get({Snakepit, :stopping_since}, nil) do
      nil -> grace
      since -> max(since + grace - System.monotonic_time(:millisecond), 0)
    end
  end

  @impl true
  def stop(_state) do
    # Pools erase their own entry on a planned stop; this covers one that crashed on the way.
    with %Config{pools: pools} <- :persistent_term.get({Snakepit, :config}, nil) do
      Enum.each(pools, &:persistent_term.erase({Snakepit.Pool, &1.name}))
    end

    :persistent_term.erase({Snakepit, :config})
    :persistent_term.erase({Snakepit, :stopping_since})
    RuntimeDir.cleanup()
    :ok
  end

  defp children(config) do
    base = [
      {Registry, keys: :unique, name: Snakepit.Pool.Registry},
      {Snakepit.Bridge.SessionStore,
       ttl: config.session_default_ttl,
       cleanup_interval: config.session_cleanup_interval,
       max_sessions: config.max_sessions}
    ]

    if config.pooling_enabled do
      RuntimeDir.ensure!()
      base ++ Enum.map(config.pools, &{Snakepit.Pool.Supervisor, &1})
    else
      base
    end
  end

  defp load_config do
    case Config.load() do
      {:ok, config} -> {:ok, config}
      {:error, message} -> {:error, {:invalid_config, message}}
    end
  end

  defp check_nif(%Config{pooling_enabled: false}), do: :ok

  defp check_nif(_config) do
    if Snakepit.Native.loaded?(),
      do: :ok,
      else: {:error, {:nif_not_loaded, Snakepit.Native.load_error_message()}}
  end

  defp resolve_python(%Config{pooling_enabled: false} = config), do: {:ok, config}

  defp resolve_python(config) do
    config.pools
    |> Enum.reduce_while({:ok, []}, fn pool, {:ok, acc} ->
      case PythonExecutable.resolve(pool.python_executable) do
        {:ok, python} -> {:cont, {:ok, [Map.put(pool, :python, python) | acc]}}
        {:error, reason} -> {:halt, {:error, reason}}
      end
    end)
    |> case do
      {:ok, pools} -> {:ok, %{config | pools: Enum.reverse(pools)}}
      error -> error
    end
  end
end
