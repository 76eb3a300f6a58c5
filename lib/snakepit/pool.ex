defmodule Snakepit.Pool do
  @moduledoc """
  One worker pool: the owner of the NIF pool resource, and the pool-level public API.

  Requests do **not** go through this process. `Snakepit.Pool` creates the scheduler resource
  with `Snakepit.Native.pool_new/2` and publishes `{resource, config}` in `:persistent_term`
  under `{Snakepit.Pool, pool_name}`; callers look it up and submit straight into the NIF (see
  `Snakepit.Pool.Call`). This process only:

  * starts `pool_size` `Snakepit.Worker`s under the pool's worker supervisor and keeps that many
    running: a worker whose Python process exits after it was ready is replaced by a new worker
    (new worker id, so no session is silently routed to a fresh Python memory) after an
    exponential backoff, and its replacement may be tainted (`Snakepit.CrashBarrier`);
  * retries workers that fail to start with a capped backoff, so a partly broken pool runs
    degraded and heals; while no worker is ready and every slot has failed, `await_ready/2` and
    `Snakepit.execute/3` answer at once with the startup error (including the Python
    traceback) instead of waiting for a timeout;
  * receives `{:snakepit_pool_event, event}` messages from the NIF: `{:recycle_worker, id}` when
    a call whose caller gave up (timeout, cancel, death) is still running after
    `abandon_grace_ms`; that worker's Python is killed and replaced, so capacity comes back;
  * on a planned stop, closes the scheduler (new and queued calls get "Pool is closed") and
    waits up to `graceful_shutdown_timeout_ms` for running calls to deliver their results
    before the workers are stopped.

  Telemetry emitted here: `[:snakepit, :pool, :worker_ready]`, `[:snakepit, :worker, :crash]`
  (every unexpected exit of a ready worker; metadata `worker_id, pool, reason, exit_code,
  classification, device`), `[:snakepit, :worker, :restarted]` (its replacement is ready;
  plus `previous_worker_id`), `[:snakepit, :worker, :tainted]` (`duration_ms`; the replacement
  was tainted) and `[:snakepit, :worker, :recycled]`.
  """

  use GenServer

  require Logger

  alias Snakepit.{Error, Native, Worker}
  alias Snakepit.Pool.Restart

  @status_starting 0
  @status_ready 1
  @status_failed 2

  @type pool_name :: atom()
  @type handle :: {reference(), map()}

  # -- public API: lookup ------------------------------------------------------------------------

  @doc "The names of the configured pools (empty when pooling is disabled or not started)."
  @spec pool_names() :: [pool_name()]
  def pool_names do
    case :persistent_term.get({Snakepit, :config}, nil) do
      nil -> []
      config -> if config.pooling_enabled, do: Enum.map(config.pools, & &1.name), else: []
    end
  end

  @doc "The default pool name (the first configured pool)."
  @spec default_pool() :: pool_name()
  def default_pool do
    case :persistent_term.get({Snakepit, :config}, nil) do
      nil -> :default
      config -> config.default_pool
    end
  end

  @doc """
  Looks up a running pool: `{:ok, {resource, config}}` or `{:error, {:pool_not_found, name}}`.
  """
  @spec lookup(pool_name()) :: {:ok, handle()} | {:error, {:pool_not_found, term()}}
  def lookup(name) when is_atom(name) do
    case :persistent_term.get({__MODULE__, name}, nil) do
      nil -> {:error, {:pool_not_found, name}}
      handle -> {:ok, handle}
    end
  end

  def lookup(name) when is_binary(name) do
    case Enum.find(pool_names(), &(Atom.to_string(&1) == name)) do
      nil -> {:error, {:pool_not_found, name}}
      atom -> lookup(atom)
    end
  end

  def lookup(name), do: {:error, {:pool_not_found, name}}

  @doc false
  @spec status(map()) :: :starting | :ready | :init_failed
  def status(%{status: ref}) do
    case :atomics.get(ref, 1) do
      @status_starting -> :starting
      @status_ready -> :ready
      @status_failed -> :init_failed
    end
  end

  # -- public API: calls -------------------------------------------------------------------------

  @doc "See `Snakepit.execute/3`."
  @spec execute(String.t(), map(), keyword()) :: {:ok, term()} | {:error, Error.t()}
  def execute(command, args, opts \\ []), do: Snakepit.Pool.Call.execute(command, args, opts)

  @doc "See `Snakepit.execute_stream/4`."
  @spec execute_stream(String.t(), map(), (map() -> term()), keyword()) ::
          :ok | {:error, Error.t()}
  def execute_stream(command, args, callback, opts \\ []),
    do: Snakepit.Pool.Stream.execute(command, args, callback, opts)

  @doc """
  Waits until **every** pool has at least one ready worker.

  `pool` is accepted for upstream compatibility (`Snakepit.Pool`, or a pool name to wait for one
  pool). `timeout` defaults to `pool_await_ready_timeout` (15 000 ms). Returns `:ok`, or
  `{:error, %Snakepit.Error{}}`: category `:pool` ("Pool failed to start workers") as soon as all
  workers of a pool failed to start, category `:timeout` ("Pool initialization timed out") on
  timeout.

      Snakepit.Pool.await_ready()
      #=> :ok
  """
  @spec await_ready(atom(), timeout() | nil) :: :ok | {:error, Error.t()}
  def await_ready(pool \\ __MODULE__, timeout \\ nil) do
    timeout = timeout || Application.get_env(:snakepit, :pool_await_ready_timeout, 15_000)
    deadline = deadline(timeout)

    pool
    |> target_pools()
    |> Enum.reduce_while(:ok, fn name, :ok ->
      case await_pool(name, remaining(deadline), timeout) do
        :ok -> {:cont, :ok}
        error -> {:halt, error}
      end
    end)
  end

  defp target_pools(__MODULE__), do: pool_names()
  defp target_pools(name), do: [name]

  defp await_pool(name, wait, timeout) do
    case GenServer.whereis(via(name)) do
      nil ->
        {:error, Error.from_reason({:pool_not_found, name}, %{pool: __MODULE__})}

      pid ->
        try do
          GenServer.call(pid, :await_ready, wait)
        catch
          :exit, {:timeout, _} ->
            {:error,
             Error.timeout_error("Pool initialization timed out", %{
               pool: name,
               timeout_ms: timeout
             })}

          :exit, _ ->
            {:error, Error.from_reason({:pool_not_found, name}, %{pool: __MODULE__})}
        end
    end
  end

  @doc """
  Aggregate statistics over all pools (upstream keys `requests`, `queued`, `errors`,
  `queue_timeouts`, `pool_saturated`, `workers`, `available`, `busy`, plus the NIF counters).
  `pool` is accepted for upstream compatibility.
  """
  @spec get_stats(atom()) :: map()
  def get_stats(pool \\ __MODULE__)

  def get_stats(__MODULE__) do
    pool_names()
    |> Enum.map(&get_stats(__MODULE__, &1))
    |> Enum.filter(&is_map/1)
    |> Enum.reduce(empty_stats(), fn stats, acc ->
      Map.merge(acc, stats, fn
        _key, a, b when is_number(a) and is_number(b) -> a + b
        _key, a, _b -> a
      end)
    end)
  end

  def get_stats(name), do: get_stats(__MODULE__, name)

  @doc "Statistics of one pool, or `{:error, {:pool_not_found, name}}`."
  @spec get_stats(atom(), pool_name()) :: map() | {:error, {:pool_not_found, term()}}
  def get_stats(_pool, name) do
    with {:ok, {resource, config}} <- lookup(name) do
      empty_stats()
      |> Map.merge(Native.pool_stats(resource))
      |> Map.put(:errors, Snakepit.Pool.ErrorCounter.count(config))
    end
  end

  defp empty_stats do
    %{
      requests: 0,
      queued: 0,
      errors: 0,
      queue_timeouts: 0,
      pool_saturated: 0,
      workers: 0,
      available: 0,
      busy: 0
    }
  end

  @doc "Ids of the ready workers of all pools. `pool` is accepted for upstream compatibility."
  @spec list_workers(atom()) :: [String.t()]
  def list_workers(pool \\ __MODULE__)

  def list_workers(__MODULE__) do
    Enum.flat_map(pool_names(), fn name ->
      case list_workers(__MODULE__, name) do
        ids when is_list(ids) -> ids
        {:error, _} -> []
      end
    end)
  end

  def list_workers(name), do: list_workers(__MODULE__, name)

  @doc "Ids of the ready workers of one pool, or `{:error, {:pool_not_found, name}}`."
  @spec list_workers(atom(), pool_name()) :: [String.t()] | {:error, {:pool_not_found, term()}}
  def list_workers(_pool, name) do
    with {:ok, {resource, _config}} <- lookup(name) do
      resource |> Native.pool_workers() |> Enum.map(& &1.id)
    end
  end

  # -- process -----------------------------------------------------------------------------------

  @doc false
  def child_spec(pool_config) do
    %{
      id: __MODULE__,
      start: {__MODULE__, :start_link, [pool_config]},
      # terminate/2 lets in-flight calls finish for up to the shutdown grace.
      shutdown: pool_config.graceful_shutdown_timeout_ms + 1_000
    }
  end

  @doc false
  def start_link(pool_config) do
    GenServer.start_link(__MODULE__, pool_config, name: via(pool_config.name))
  end

  @doc false
  def via(name), do: {:via, Registry, {Snakepit.Pool.Registry, {:pool, name}}}

  @doc false
  def worker_supervisor(name), do: {:via, Registry, {Snakepit.Pool.Registry, {:workers, name}}}

  @doc """
  Closes every pool: queued and new calls get `{:error, %Snakepit.Error{message: "Pool is
  closed"}}` at once, running calls go on. Called when the application stops, before the pools
  drain (so a pool stopped later does not accept work meanwhile).
  """
  @spec close_all() :: :ok
  def close_all do
    for name <- pool_names(), {:ok, {resource, _}} <- [lookup(name)] do
      Native.pool_close(resource)
    end

    :ok
  end

  @impl true
  def init(pool_config) do
    # Trap exits so terminate/2 closes and drains the NIF pool on shutdown.
    Process.flag(:trap_exit, true)

    resource = Native.pool_new(nif_config(pool_config), self())
    status = :atomics.new(1, signed: false)
    config = Map.put(pool_config, :status, status)
    :persistent_term.put({__MODULE__, config.name}, {resource, config})

    state = %{
      name: config.name,
      config: config,
      resource: resource,
      # slot => the running Worker (starting or ready); a slot waiting for a restart is absent.
      slots: %{},
      monitors: %{},
      # slot => consecutive failed starts (cleared when the slot's worker is ready).
      failures: %{},
      init_error: nil,
      waiters: []
    }

    {:ok, state, {:continue, :start_workers}}
  end

  @impl true
  def handle_continue(:start_workers, state) do
    state = Enum.reduce(1..state.config.pool_size, state, &start_worker(&2, &1, Restart.fresh()))

    {:noreply, state}
  end

  @impl true
  def handle_call(:await_ready, from, state) do
    cond do
      ready_count(state) > 0 -> {:reply, :ok, state}
      state.init_error -> {:reply, {:error, state.init_error}, state}
      true -> {:noreply, %{state | waiters: [from | state.waiters]}}
    end
  end

  @impl true
  def handle_info({:worker_ready, slot, pid, worker_id}, state) do
    case state.slots do
      %{^slot => %{pid: ^pid} = info} ->
        info = %{info | id: worker_id, status: :ready, ready_at: now_ms()}

        state = %{
          state
          | slots: Map.put(state.slots, slot, info),
            failures: Map.delete(state.failures, slot),
            init_error: nil
        }

        :atomics.put(state.config.status, 1, @status_ready)

        Snakepit.Telemetry.execute(
          [:snakepit, :pool, :worker_ready],
          %{worker_count: ready_count(state), count: 1},
          %{pool_name: state.name, worker_id: worker_id}
        )

        replaced(state, worker_id, info.restart)
        Enum.each(state.waiters, &GenServer.reply(&1, :ok))
        {:noreply, %{state | waiters: []}}

      _ ->
        {:noreply, state}
    end
  end

  def handle_info({:worker_start_failed, slot, pid, error}, state) do
    case state.slots do
      %{^slot => %{pid: ^pid} = info} ->
        {:noreply, put_in(state.slots[slot], %{info | status: {:failed, error}})}

      _ ->
        {:noreply, state}
    end
  end

  def handle_info({:DOWN, mref, :process, _pid, reason}, state) do
    case Map.pop(state.monitors, mref) do
      {nil, _} ->
        {:noreply, state}

      {slot, monitors} ->
        state = %{state | monitors: monitors}
        {:noreply, worker_down(state, slot, reason)}
    end
  end

  def handle_info({:restart_slot, slot, restart}, state) do
    if Map.has_key?(state.slots, slot),
      do: {:noreply, state},
      else: {:noreply, start_worker(state, slot, restart)}
  end

  def handle_info({:snakepit_pool_event, event}, state), do: {:noreply, pool_event(event, state)}

  def handle_info({:snakepit_pool_event, kind, payload}, state),
    do: {:noreply, pool_event({kind, payload}, state)}

  def handle_info({:EXIT, _from, _reason}, state), do: {:noreply, state}

  def handle_info(message, state) do
    Logger.debug("Snakepit.Pool #{inspect(state.name)} ignored #{inspect(message)}")
    {:noreply, state}
  end

  @impl true
  def terminate(reason, state) do
    # Queued callers get :pool_closed at once, new calls are refused.
    Native.pool_close(state.resource)

    # On a crash the supervisor starts a new pool that overwrites the entry; erasing it only on
    # a planned stop avoids a window where callers see :pool_not_found. On a planned stop the
    # entry stays while draining, so new callers get the clear "Pool is closed" error.
    if planned?(reason) do
      drain(state)
      :persistent_term.erase({__MODULE__, state.name})
    end

    :ok
  end

  # Waits (up to graceful_shutdown_timeout_ms) until no caller waits for a reply, so calls
  # running when the application stops still get their result; the workers are stopped after
  # this (the worker supervisor stops after the pool).
  defp drain(state) do
    grace = state.config.graceful_shutdown_timeout_ms

    # During an application stop the grace runs from the moment every pool was closed, so
    # pools draining after this one do not add theirs.
    case await_drained(state.resource, now_ms() + Snakepit.Application.grace_left(grace)) do
      0 ->
        :ok

      waiting ->
        Logger.warning(
          "Snakepit pool #{inspect(state.name)}: stopping with #{waiting} call(s) unfinished " <>
            "after #{grace} ms"
        )
    end
  end

  defp await_drained(resource, deadline) do
    case awaiting_reply(resource) do
      0 ->
        0

      waiting ->
        if now_ms() >= deadline do
          waiting
        else
          Process.sleep(10)
          await_drained(resource, deadline)
        end
    end
  end

  defp awaiting_reply(resource) do
    stats = Native.pool_stats(resource)
    Map.get(stats, :awaiting_reply, stats.in_flight)
  end

  # -- workers -----------------------------------------------------------------------------------

  defp start_worker(state, slot, restart) do
    spec = {Worker, pool_name: state.name, slot: slot, pool_pid: self(), config: state.config}

    case DynamicSupervisor.start_child(worker_supervisor(state.name), spec) do
      {:ok, pid} ->
        mref = Process.monitor(pid)
        info = %{pid: pid, id: nil, status: :starting, ready_at: nil, recycle: false}

        %{
          state
          | slots: Map.put(state.slots, slot, Map.put(info, :restart, restart)),
            monitors: Map.put(state.monitors, mref, slot)
        }

      {:error, reason} ->
        Logger.error(
          "Snakepit pool #{inspect(state.name)}: cannot start worker: #{inspect(reason)}"
        )

        state
    end
  end

  defp worker_down(state, slot, reason) do
    {info, slots} = Map.pop(state.slots, slot)
    state = %{state | slots: slots}

    # The Worker removes itself from the scheduler when its Python process exits; this covers a
    # Worker process that crashed without doing so. pool_remove_worker is idempotent.
    if info.id, do: Native.pool_remove_worker(state.resource, info.id, down_reason(reason))

    cond do
      info.recycle -> start_worker(state, slot, Restart.fresh())
      info.status == :ready -> crashed(state, slot, info, down_reason(reason))
      true -> start_failed(state, slot, info, reason)
    end
  end

  # A ready worker's Python process exited (or the Worker process died): report it, and start
  # a replacement (with a new id) after the slot's crash backoff.
  defp crashed(state, slot, info, reason) do
    crash = Restart.crash(state.config.crash_barrier, info.id, reason)

    Snakepit.Telemetry.execute([:snakepit, :worker, :crash], %{}, %{
      worker_id: info.id,
      pool: state.name,
      reason: reason,
      exit_code: crash.exit_code,
      classification: crash.classification,
      device: nil
    })

    uptime = info.ready_at && now_ms() - info.ready_at
    {restart, delay} = Restart.after_crash(info.restart, crash, uptime)
    Process.send_after(self(), {:restart_slot, slot, restart}, delay)
    state
  end

  # A worker that never became ready: retry the slot with a capped backoff. Once no worker is
  # ready and every slot has failed, the pool reports the start error (await_ready and execute
  # answer at once instead of waiting for a timeout) while the retries go on.
  defp start_failed(state, slot, info, reason) do
    error =
      case info.status do
        {:failed, %Error{} = error} -> error
        _ -> Error.worker_error("Worker failed to start", %{pool: state.name, reason: reason})
      end

    failures = Map.get(state.failures, slot, 0) + 1
    delay = Restart.start_retry_delay(failures)
    Process.send_after(self(), {:restart_slot, slot, info.restart}, delay)

    Logger.warning(
      "Snakepit pool #{inspect(state.name)}: worker slot #{slot} failed to start " <>
        "(#{failures} in a row); retrying in #{delay} ms"
    )

    state = %{state | failures: Map.put(state.failures, slot, failures)}

    if ready_count(state) == 0 and map_size(state.failures) >= state.config.pool_size do
      init_error = state.init_error || pool_start_error(state.name, error)
      :atomics.put(state.config.status, 1, @status_failed)
      # Calls queued meanwhile (made while the pool was starting) fail now, like new ones,
      # instead of waiting for the queue timeout; so do calls that read the status just before.
      Native.pool_fail_queued(state.resource)
      Enum.each(state.waiters, &GenServer.reply(&1, {:error, init_error}))
      %{state | init_error: init_error, waiters: []}
    else
      state
    end
  end

  defp pool_start_error(name, %Error{} = error) do
    %Error{
      category: :pool,
      message: "Pool failed to start workers",
      details: %{pool: name, reason: :init_failed, worker_error: error},
      python_traceback: error.python_traceback
    }
  end

  # The worker `worker_id` just became ready in place of one that crashed: taint it when the
  # crash barrier says so (see Snakepit.CrashBarrier for why the replacement is tainted).
  defp replaced(_state, _worker_id, %{crash: nil}), do: :ok

  defp replaced(state, worker_id, %{crash: crash}) do
    meta = %{
      worker_id: worker_id,
      previous_worker_id: crash.worker_id,
      pool: state.name,
      reason: crash.reason,
      exit_code: crash.exit_code,
      classification: crash.classification,
      device: nil
    }

    Snakepit.Telemetry.execute([:snakepit, :worker, :restarted], %{}, meta)

    if crash.taint and other_untainted_worker?(state.resource, worker_id) do
      duration = state.config.crash_barrier.taint_duration_ms
      Native.pool_taint_worker(state.resource, worker_id, duration)
      Snakepit.Telemetry.execute([:snakepit, :worker, :tainted], %{duration_ms: duration}, meta)
    end

    :ok
  end

  # Tainting the only usable worker would turn every call into a queue timeout.
  defp other_untainted_worker?(resource, worker_id) do
    resource
    |> Native.pool_workers()
    |> Enum.any?(&(&1.id != worker_id and not &1.tainted))
  end

  defp pool_event({:recycle_worker, worker_id}, state) do
    case Enum.find(state.slots, fn {_slot, info} -> info.id == worker_id end) do
      {slot, info} ->
        Logger.warning(
          "Snakepit pool #{inspect(state.name)}: recycling worker #{worker_id}: " <>
            "an abandoned call overran the grace period"
        )

        Snakepit.Telemetry.execute([:snakepit, :worker, :recycled], %{count: 1}, %{
          worker_id: worker_id,
          pool: state.name,
          reason: :abandon_grace_exceeded,
          uptime_seconds: div(now_ms() - (info.ready_at || now_ms()), 1000),
          request_count: nil
        })

        Worker.stop_async(info.pid, {:shutdown, :recycled})
        put_in(state.slots[slot].recycle, true)

      nil ->
        state
    end
  end

  defp pool_event(event, state) do
    Logger.debug("Snakepit pool #{inspect(state.name)} event: #{inspect(event)}")
    state
  end

  # -- helpers -----------------------------------------------------------------------------------

  @doc false
  # `abandon_grace_ms`: nil (the default) leaves the key out, so the NIF uses its default
  # (5000 ms); `:infinity` is sent as nil (never recycle).
  @spec nif_config(map()) :: map()
  def nif_config(config) do
    base = %{
      name: Atom.to_string(config.name),
      affinity: config.affinity,
      max_queue_size: config.max_queue_size,
      queue_timeout_ms: config.queue_timeout_ms,
      affinity_ttl_ms: config.affinity_ttl_ms,
      max_affinity_entries: config.max_affinity_entries,
      max_message_bytes: config.max_message_bytes
    }

    case config.abandon_grace_ms do
      nil -> base
      :infinity -> Map.put(base, :abandon_grace_ms, nil)
      ms -> Map.put(base, :abandon_grace_ms, ms)
    end
  end

  defp ready_count(state), do: Enum.count(state.slots, fn {_, info} -> info.status == :ready end)

  defp down_reason({:shutdown, reason}), do: reason
  defp down_reason(reason), do: reason

  defp planned?(reason), do: reason in [:normal, :shutdown] or match?({:shutdown, _}, reason)

  defp now_ms, do: System.monotonic_time(:millisecond)

  defp deadline(:infinity), do: :infinity
  defp deadline(ms), do: now_ms() + ms

  defp remaining(:infinity), do: :infinity
  defp remaining(deadline), do: max(deadline - now_ms(), 0)
end
