defmodule Snakepit.Telemetry do
  @moduledoc """
  Telemetry events of Snakepit.

  `execute/3` forwards every event to `:telemetry.execute/3` when the `:telemetry` library is
  loaded (it is optional: Snakepit has no dependencies), and to handlers attached locally with
  `attach/4` / `attach_many/4` (useful in tests and in applications without `:telemetry`).

  ## Events emitted

  | Event | Measurements | Metadata |
  |---|---|---|
  | `[:snakepit, :pool, :worker_ready]` | `worker_count`, `count: 1` | `pool_name`, `worker_id` |
  | `[:snakepit, :pool, :worker, :spawned]` | `duration` (native), `system_time` | `node`, `pool_name`, `worker_id`, `worker_pid`, `python_pid`, `mode: :process` |
  | `[:snakepit, :pool, :worker, :terminated]` | `lifetime` (native), `total_commands` | `node`, `pool_name`, `worker_id`, `worker_pid`, `reason`, `planned` |
  | `[:snakepit, :request, :executed]` | `duration_us` | `pool`, `worker_id`, `command`, `success` (+ `streaming: true`) |
  | `[:snakepit, :python, :exception, :mapped \\| :unmapped]` | `%{}` | `python_type`, `library`, `function` |
  | `[:snakepit, :worker, :crash]` | `%{}` | `worker_id`, `pool`, `reason`, `exit_code`, `classification`, `device` |
  | `[:snakepit, :worker, :restarted]` | `%{}` | same, plus `previous_worker_id` (the crashed one) |
  | `[:snakepit, :worker, :tainted]` | `duration_ms` | same as `:restarted` (`worker_id` is the tainted replacement) |
  | `[:snakepit, :worker, :recycled]` | `count: 1` | `worker_id`, `pool`, `reason: :abandon_grace_exceeded`, `uptime_seconds`, `request_count: nil` |

  `[:snakepit, :request, :executed]` is emitted from the caller process (requests are submitted
  straight to the NIF, no pool process is involved); `worker_id` is nil because the caller does
  not learn which worker served it.

  Upstream Snakepit also defines these events (not all are emitted yet): `[:snakepit, :pool,
  :init_started]`, `[:snakepit, :pool, :init_complete]`, `[:snakepit, :pool, :call, :dispatched]`,
  `[:snakepit, :pool, :saturated]`, `[:snakepit, :pool, :capacity_reached]`, `[:snakepit,
  :grpc_worker, :execute, :start | :stop | :exception]`, `[:snakepit, :worker, :crash]`,
  `[:snakepit, :worker, :tainted]`, `[:snakepit, :worker, :restarted]`, `[:snakepit, :worker,
  :recycled]`, `[:snakepit, :worker, :health_check_failed]`, `[:snakepit, :heartbeat, ...]`,
  `[:snakepit, :bridge, :session, :pruned]`, `[:snakepit, :bridge, :session,
  :accumulation_warning]`, `[:snakepit, :cleanup, :start | :success | :timeout]`.
  """

  require Logger

  # Local handlers live in :persistent_term: reads (one per emitted event) are free and the
  # handlers survive application restarts; attach/detach are rare (tests, app boot).
  @handlers_key {__MODULE__, :handlers}

  @type event :: [atom()]
  @type handler :: (event(), map(), map(), term() -> any())

  @doc """
  Emits an event.

      iex> Snakepit.Telemetry.execute([:snakepit, :example], %{count: 1}, %{})
      :ok
  """
  @spec execute(event(), map(), map()) :: :ok
  def execute(event, measurements, metadata) do
    if telemetry_available?() do
      apply(:telemetry, :execute, [event, measurements, metadata])
    end

    for {id, events, fun, config} <- :persistent_term.get(@handlers_key, []),
        event in events do
      run_handler(id, fun, event, measurements, metadata, config)
    end

    :ok
  end

  @doc """
  Attaches a local handler `fun.(event, measurements, metadata, config)` for `event`.
  Returns `{:error, :already_exists}` if `handler_id` is taken.
  """
  @spec attach(term(), event(), handler(), term()) :: :ok | {:error, :already_exists}
  def attach(handler_id, event, fun, config), do: attach_many(handler_id, [event], fun, config)

  @doc "Attaches a local handler for several events."
  @spec attach_many(term(), [event()], handler(), term()) :: :ok | {:error, :already_exists}
  def attach_many(handler_id, events, fun, config) when is_function(fun, 4) do
    :global.trans({@handlers_key, self()}, fn ->
      handlers = :persistent_term.get(@handlers_key, [])

      if List.keymember?(handlers, handler_id, 0) do
        {:error, :already_exists}
      else
        :persistent_term.put(@handlers_key, handlers ++ [{handler_id, events, fun, config}])
      end
    end)
  end

  @doc "Detaches a local handler."
  @spec detach(term()) :: :ok | {:error, :not_found}
  def detach(handler_id) do
    :global.trans({@handlers_key, self()}, fn ->
      handlers = :persistent_term.get(@handlers_key, [])

      if List.keymember?(handlers, handler_id, 0) do
        :persistent_term.put(@handlers_key, List.keydelete(handlers, handler_id, 0))
      else
        {:error, :not_found}
      end
    end)
  end

  defp telemetry_available? do
    case :persistent_term.get({__MODULE__, :telemetry_loaded}, nil) do
      nil ->
        loaded = Code.ensure_loaded?(:telemetry)
        :persistent_term.put({__MODULE__, :telemetry_loaded}, loaded)
        loaded

      loaded ->
        loaded
    end
  end

  # Like :telemetry, a handler that raises is detached so it cannot break the emitter again.
  defp run_handler(id, fun, event, measurements, metadata, config) do
    fun.(event, measurements, metadata, config)
  rescue
    error ->
      Logger.error(
        "Snakepit telemetry handler #{inspect(id)} failed and was detached: " <>
          Exception.format(:error, error, __STACKTRACE__)
      )

      detach(id)
  end
end
