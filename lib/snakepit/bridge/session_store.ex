defmodule Snakepit.Bridge.SessionStore do
  @moduledoc """
  Caller sessions (ETS table `:snakepit_sessions`, owned by this GenServer, registered as
  `Snakepit.Bridge.SessionStore`).

  Session affinity itself lives in the NIF scheduler (which worker a session is pinned to); this
  store keeps the session records of the upstream API: `create_session/2` (idempotent),
  `get_session/1`, `update_session/2`, `delete_session/1` (also drops the pin in every pool),
  `store_worker_session/2`, TTL expiry (swept every `session_cleanup_interval` ms) and a
  `max_sessions` quota.

  `get_session/1` reports as `last_worker_id` the worker the scheduler has pinned the session
  to when the NIF exposes it, else the value recorded with `store_worker_session/2`. A session
  that only the scheduler knows (a caller used `execute_in_session/4` without creating it) is
  created on first `get_session/1`.

      {:ok, session} = Snakepit.Bridge.SessionStore.create_session("user-42")
      session.id
      #=> "user-42"
  """

  use GenServer

  alias Snakepit.Bridge.Session

  @table :snakepit_sessions

  # -- API ---------------------------------------------------------------------------------------

  @doc false
  def start_link(opts \\ []) do
    GenServer.start_link(__MODULE__, opts, name: Keyword.get(opts, :name, __MODULE__))
  end

  @doc """
  Creates a session (or returns the existing one). Options: `:ttl` (seconds), `:metadata`,
  `:programs`, `:last_worker_id`.
  """
  @spec create_session(String.t(), keyword()) :: {:ok, Session.t()} | {:error, term()}
  def create_session(session_id, opts \\ []) when is_binary(session_id),
    do: create_session(__MODULE__, session_id, opts)

  @doc "Like `create_session/2` on a given store."
  @spec create_session(GenServer.server(), String.t(), keyword()) ::
          {:ok, Session.t()} | {:error, term()}
  def create_session(server, session_id, opts) when is_binary(session_id),
    do: GenServer.call(server, {:create, session_id, opts})

  @doc "Fetches a session and refreshes its `last_accessed` time."
  @spec get_session(GenServer.server(), String.t()) :: {:ok, Session.t()} | {:error, :not_found}
  def get_session(server \\ __MODULE__, session_id) when is_binary(session_id),
    do: GenServer.call(server, {:get, session_id})

  @doc "Updates a session with `fun` (session -> session)."
  @spec update_session(GenServer.server(), String.t(), (Session.t() -> Session.t())) ::
          {:ok, Session.t()} | {:error, term()}
  def update_session(server \\ __MODULE__, session_id, fun) when is_function(fun, 1),
    do: GenServer.call(server, {:update, session_id, fun})

  @doc """
  Deletes a session and its worker pin in every pool (a strict session whose worker died is
  released this way). Always `:ok`.

  Like the `session_id:` option of the execute family, an atom or integer id names the same
  session as its string form.

      Snakepit.Bridge.SessionStore.delete_session("user-42")
      #=> :ok
  """
  @spec delete_session(GenServer.server(), String.t() | atom() | integer()) :: :ok
  def delete_session(server \\ __MODULE__, session_id)

  def delete_session(server, session_id)
      when (is_atom(session_id) and session_id not in [nil, true, false]) or
             is_integer(session_id),
      do: delete_session(server, to_string(session_id))

  def delete_session(server, session_id) when is_binary(session_id) do
    GenServer.call(server, {:delete, session_id})

    for name <- Snakepit.Pool.pool_names(),
        {:ok, {resource, _}} <- [Snakepit.Pool.lookup(name)] do
      Snakepit.Native.pool_delete_session(resource, session_id)
    end

    :ok
  end

  @doc """
  Records the worker of a session, creating the session when missing (then `worker_id` must be
  a non-empty string: `{:error, :invalid_last_worker_id}`).
  """
  @spec store_worker_session(GenServer.server(), String.t(), term()) :: :ok | {:error, term()}
  def store_worker_session(server \\ __MODULE__, session_id, worker_id),
    do: GenServer.call(server, {:store_worker, session_id, worker_id})

  @doc "Whether a session exists."
  @spec session_exists?(GenServer.server(), String.t()) :: boolean()
  def session_exists?(server \\ __MODULE__, session_id),
    do: GenServer.call(server, {:exists?, session_id})

  @doc "All session ids."
  @spec list_sessions(GenServer.server()) :: [String.t()]
  def list_sessions(server \\ __MODULE__), do: GenServer.call(server, :list)

  @doc "Removes expired sessions now; returns how many."
  @spec cleanup_expired_sessions(GenServer.server()) :: non_neg_integer()
  def cleanup_expired_sessions(server \\ __MODULE__), do: GenServer.call(server, :cleanup)

  @doc "Counters: `sessions_created`, `sessions_deleted`, `sessions_expired`, `cleanup_runs`, `current_sessions`, `memory_usage_bytes`, `table_info`."
  @spec get_stats(GenServer.server()) :: map()
  def get_stats(server \\ __MODULE__), do: GenServer.call(server, :stats)

  # -- GenServer ---------------------------------------------------------------------------------

  @impl true
  def init(opts) do
    table =
      if Keyword.get(opts, :name, __MODULE__) == __MODULE__,
        do: :ets.new(@table, [:named_table, :protected, :set, read_concurrency: true]),
        else: :ets.new(@table, [:protected, :set, read_concurrency: true])

    state = %{
      table: table,
      ttl: Keyword.get(opts, :ttl, 3600),
      cleanup_interval: Keyword.get(opts, :cleanup_interval, 60_000),
      max_sessions: Keyword.get(opts, :max_sessions, 10_000),
      stats: %{sessions_created: 0, sessions_deleted: 0, sessions_expired: 0, cleanup_runs: 0}
    }

    schedule_cleanup(state)
    {:ok, state}
  end

  @impl true
  def handle_call({:create, id, opts}, _from, state) do
    case fetch(state, id) do
      {:ok, session} -> {:reply, {:ok, session}, state}
      :error -> insert_new(state, id, opts)
    end
  end

  def handle_call({:get, id}, _from, state) do
    scheduler_worker = scheduler_worker(id)

    case fetch(state, id) do
      {:ok, session} ->
        session = %{session | last_accessed: now()}

        session =
          if scheduler_worker, do: %{session | last_worker_id: scheduler_worker}, else: session

        put(state, session)
        {:reply, {:ok, session}, state}

      :error when is_binary(scheduler_worker) ->
        {reply, state} = insert_new(state, id, last_worker_id: scheduler_worker) |> unwrap()
        {:reply, reply, state}

      :error ->
        {:reply, {:error, :not_found}, state}
    end
  end

  def handle_call({:update, id, fun}, _from, state) do
    with {:ok, session} <- fetch(state, id),
         {:ok, %Session{id: ^id} = updated} <- safe_update(fun, session) do
      updated = %{updated | last_accessed: now()}
      put(state, updated)
      {:reply, {:ok, updated}, state}
    else
      :error -> {:reply, {:error, :not_found}, state}
      {:ok, other} -> {:reply, {:error, {:invalid_session, other}}, state}
      {:error, _} = error -> {:reply, error, state}
    end
  end

  def handle_call({:delete, id}, _from, state) do
    deleted = :ets.member(state.table, id)
    :ets.delete(state.table, id)
    state = if deleted, do: bump(state, :sessions_deleted, 1), else: state
    {:reply, :ok, state}
  end

  def handle_call({:store_worker, id, worker_id}, _from, state) do
    case fetch(state, id) do
      {:ok, session} ->
        put(state, %{session | last_worker_id: worker_id, last_accessed: now()})
        {:reply, :ok, state}

      :error when is_binary(worker_id) and worker_id != "" ->
        case insert_new(state, id, last_worker_id: worker_id) do
          {:reply, {:ok, _}, state} -> {:reply, :ok, state}
          other -> other
        end

      :error ->
        {:reply, {:error, :invalid_last_worker_id}, state}
    end
  end

  def handle_call({:exists?, id}, _from, state),
    do: {:reply, match?({:ok, _}, fetch(state, id)), state}

  def handle_call(:list, _from, state) do
    ids = :ets.select(state.table, [{{:"$1", :_}, [], [:"$1"]}])
    {:reply, ids, state}
  end

  def handle_call(:cleanup, _from, state) do
    {count, state} = sweep(state)
    {:reply, count, state}
  end

  def handle_call(:stats, _from, state) do
    info = :ets.info(state.table)

    stats =
      Map.merge(state.stats, %{
        current_sessions: info[:size],
        memory_usage_bytes: info[:memory] * :erlang.system_info(:wordsize),
        table_info: %{name: info[:name], size: info[:size], type: info[:type]}
      })

    {:reply, stats, state}
  end

  @impl true
  def handle_info(:cleanup, state) do
    {_count, state} = sweep(state)
    schedule_cleanup(state)
    {:noreply, state}
  end

  def handle_info(_message, state), do: {:noreply, state}

  # -- internals ---------------------------------------------------------------------------------

  defp insert_new(state, "", _opts), do: {:reply, {:error, :invalid_id}, state}

  defp insert_new(state, id, opts) do
    if state.max_sessions != :infinity and :ets.info(state.table, :size) >= state.max_sessions do
      {:reply, {:error, :session_quota_exceeded}, state}
    else
      session = Session.new(id, now(), Keyword.put_new(opts, :ttl, state.ttl))
      put(state, session)
      {:reply, {:ok, session}, bump(state, :sessions_created, 1)}
    end
  end

  defp unwrap({:reply, reply, state}), do: {reply, state}

  defp fetch(state, id) do
    case :ets.lookup(state.table, id) do
      [{^id, {_at, _ttl, session}}] ->
        if Session.expired?(session, now()), do: :error, else: {:ok, session}

      [] ->
        :error
    end
  end

  defp put(state, %Session{} = session) do
    :ets.insert(state.table, {session.id, {session.last_accessed, session.ttl, session}})
  end

  defp safe_update(fun, session) do
    {:ok, fun.(session)}
  rescue
    exception -> {:error, {:update_failed, exception}}
  catch
    kind, reason -> {:error, {:update_failed, {kind, reason}}}
  end

  defp sweep(state) do
    now = now()

    # Expired iff last_accessed + ttl < now.
    spec = [{{:_, {:"$1", :"$2", :_}}, [{:<, {:+, :"$1", :"$2"}, now}], [true]}]
    count = :ets.select_delete(state.table, spec)

    if count > 0 do
      Snakepit.Telemetry.execute(
        [:snakepit, :bridge, :session, :pruned],
        %{
          count: count,
          remaining_sessions: :ets.info(state.table, :size),
          system_time: System.system_time()
        },
        %{reason: :ttl, table_name: @table, max_sessions: state.max_sessions}
      )
    end

    state = state |> bump(:sessions_expired, count) |> bump(:cleanup_runs, 1)
    {count, state}
  end

  defp bump(state, key, n), do: %{state | stats: Map.update!(state.stats, key, &(&1 + n))}

  defp schedule_cleanup(state), do: Process.send_after(self(), :cleanup, state.cleanup_interval)

  # The scheduler's pin for the session, when the NIF exposes it (pool_session_worker/2).
  defp scheduler_worker(id) do
    Enum.find_value(Snakepit.Pool.pool_names(), fn name ->
      with {:ok, {resource, _}} <- Snakepit.Pool.lookup(name) do
        try do
          case Snakepit.Native.pool_session_worker(resource, id) do
            worker_id when is_binary(worker_id) -> worker_id
            _ -> nil
          end
        rescue
          _ -> nil
        end
      else
        _ -> nil
      end
    end)
  end

  defp now, do: System.monotonic_time(:second)
end
