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
    exponential backoff;
  * tracks readiness for `await_ready/2` (a pool whose workers all failed to start answers with
    the startup error, including the Python traceback, instead of waiting);
  * receives `{:snakepit_pool_event, event}` messages from the NIF (e.g. a worker to recycle).
  """

  use GenServer

  require Logger

  alias Snakepit.{Error, Native, Worker}

  @status_starting 0
  @status_ready 1
  @status_failed 2

  # A worker that stayed up this long resets its slot's crash backoff.
  @stable_after_ms 30_000
  @max_backoff_ms 5_000

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
    with {:ok, {resource, _config}} <- lookup(name) do
      Map.merge(empty_stats(), Native.pool_stats(resource))
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
  def start_link(pool_config) do
    GenServer.start_link(__MODULE__, pool_config, name: via(pool_config.name))
  end

  @doc false
  def via(name), do: {:via, Registry, {Snakepit.Pool.Registry, {:pool, name}}}

  @doc false
  def worker_supervisor(name), do: {:via, Registry, {Snakepit.Pool.Registry, {:workers, name}}}

  @impl true
  def init(pool_config) do
    # Trap exits so terminate/2 closes the NIF pool (queued callers get :pool_closed at once).
    Process.flag(:trap_exit, true)

    resource = Native.pool_new(nif_config(pool_config), self())
    status = :atomics.new(1, signed: false)
    config = Map.put(pool_config, :status, status)
    :persistent_term.put({__MODULE__, config.name}, {resource, config})

    state = %{
      name: config.name,
      config: config,
      resource: resource,
      slots: %{},
      monitors: %{},
      init_error: nil,
      waiters: [],
      shutting_down: false
    }

    {:ok, state, {:continue, :start_workers}}
  end

  @impl true
  def handle_continue(:start_workers, state) do
    state = Enum.reduce(1..state.config.pool_size, state, &start_worker(&2, &1, 0))
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
        info = %{info | id: worker_id, status: :ready, ever_ready: true, ready_at: now_ms()}
        state = put_in(state.slots[slot], info)
        :atomics.put(state.config.status, 1, @status_ready)

        Snakepit.Telemetry.execute(
          [:snakepit, :pool, :worker_ready],
          %{worker_count: ready_count(state), count: 1},
          %{pool_name: state.name, worker_id: worker_id}
        )

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

  def handle_info({:restart_slot, slot, crashes}, state) do
    if state.shutting_down or Map.has_key?(state.slots, slot) do
      {:noreply, state}
    else
      {:noreply, start_worker(state, slot, crashes)}
    end
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
    Native.pool_close(state.resource)

    # On a crash the supervisor starts a new pool that overwrites the entry; erasing it only on
    # a planned stop avoids a window where callers see :pool_not_found.
    if planned?(reason), do: :persistent_term.erase({__MODULE__, state.name})
    :ok
  end

  # -- workers -----------------------------------------------------------------------------------

  defp start_worker(state, slot, crashes) do
    spec = {Worker, pool_name: state.name, slot: slot, pool_pid: self(), config: state.config}

    case DynamicSupervisor.start_child(worker_supervisor(state.name), spec) do
      {:ok, pid} ->
        mref = Process.monitor(pid)

        info = %{
          pid: pid,
          id: nil,
          status: :starting,
          ever_ready: crashes > 0,
          crashes: crashes,
          ready_at: nil,
          recycle: false
        }

        %{
          state
          | slots: Map.put(state.slots, slot, info),
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
      state.shutting_down ->
        state

      info.recycle ->
        start_worker(state, slot, 0)

      info.status == :ready or info.ever_ready ->
        schedule_restart(state, slot, info)

      true ->
        startup_failed(state, slot, info, reason)
    end
  end

  defp schedule_restart(state, slot, info) do
    stable? = info.ready_at && now_ms() - info.ready_at > @stable_after_ms
    crashes = if stable?, do: 1, else: info.crashes + 1
    delay = if crashes <= 1, do: 0, else: min(100 * Integer.pow(2, crashes - 2), @max_backoff_ms)
    Process.send_after(self(), {:restart_slot, slot, crashes}, delay)
    state
  end

  # A slot that never became ready is not retried (a broken adapter would otherwise loop);
  # once no slot is starting and none is ready, the pool's start has failed.
  defp startup_failed(state, _slot, info, reason) do
    error =
      case info.status do
        {:failed, %Error{} = error} -> error
        _ -> Error.worker_error("Worker failed to start", %{pool: state.name, reason: reason})
      end

    state = %{state | init_error: state.init_error || pool_start_error(state.name, error)}

    if map_size(state.slots) == 0 and ready_count(state) == 0 do
      :atomics.put(state.config.status, 1, @status_failed)
      Enum.each(state.waiters, &GenServer.reply(&1, {:error, state.init_error}))
      %{state | waiters: []}
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

  defp pool_event({:recycle_worker, worker_id}, state) do
    case Enum.find(state.slots, fn {_slot, info} -> info.id == worker_id end) do
      {slot, info} ->
        Logger.info("Snakepit pool #{inspect(state.name)}: recycling worker #{worker_id}")
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
  @spec nif_config(map()) :: map()
  def nif_config(config) do
    %{
      name: Atom.to_string(config.name),
      affinity: config.affinity,
      max_queue_size: config.max_queue_size,
      queue_timeout_ms: config.queue_timeout_ms,
      affinity_ttl_ms: config.affinity_ttl_ms,
      max_affinity_entries: config.max_affinity_entries,
      abandon_grace_ms: config.abandon_grace_ms,
      max_message_bytes: config.max_message_bytes
    }
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
