defmodule Snakepit.Config.Pool do
  @moduledoc """
  Normalization of one pool's configuration (a map or keyword list in `pools:`).

  | Key | Default | Notes |
  |---|---|---|
  | `name` | required | atom (a string is converted) |
  | `pool_size` | top-level `pool_size`, else `default_pool_size` | positive integer, capped at `max_workers` |
  | `max_workers` | `pool_max_workers` (150) | |
  | `worker_profile` | `:process` | `:process` (capacity 1) or `:thread` (capacity `threads_per_worker`) |
  | `threads_per_worker` | 10 | thread profile only; passed to Python as `--max-workers` |
  | `affinity` | global `affinity` (`:hint`) | `:hint`, `:strict_queue`, `:strict_fail_fast` (strings accepted) |
  | `adapter_module` | global `adapter_module` | Elixir adapter module (optional) |
  | `adapter_args` | `["--adapter", "snakepit_bridge.adapters.showcase.ShowcaseAdapter"]` | CLI args for the Python worker |
  | `adapter_spec` | nil | thread profile: Python adapter class when `adapter_args` has no `--adapter` |
  | `adapter_env` | `[]` | `[{name, value}]` or map; a `PYTHONPATH` entry is prepended to the default path |
  | `python_executable` | global resolution | per-pool interpreter |
  | `capacity_strategy` | `:pool` | `:profile` forces capacity 1 |
  | `affinity_ttl_ms` | `session_default_ttl` × 1000 | idle lifetime of a session → worker pin (a session with a call running is not idle) |
  | `max_affinity_entries` | 100 000 | bound on pins; the least recently used idle one goes first (busy sessions are never evicted) |
  | `abandon_grace_ms` | nil (the NIF's 5000) | recycle a worker whose abandoned call (caller timed out, cancelled or died) is still running this long after; `:infinity` never recycles |
  | `max_message_bytes` | 100 MiB | gRPC message limit |
  | `process_group_kill` | global `process_group_kill` (true) | Python runs in its own process group, killed as a whole on stop |
  | `crash_barrier` | global `crash_barrier` | taint and retry after worker crashes (`Snakepit.CrashBarrier`) |

  The queue settings (`pool_queue_timeout`, `pool_max_queue_size`) and request timeouts are
  global, as upstream.
  """

  import Snakepit.Config, only: [check: 3, affinity_error: 2, parse_affinity: 1]

  alias Snakepit.Defaults

  require Logger

  @type t :: %{
          name: atom(),
          pool_size: pos_integer(),
          worker_profile: :process | :thread,
          threads_per_worker: pos_integer(),
          capacity: pos_integer(),
          affinity: :hint | :strict_queue | :strict_fail_fast,
          adapter_module: module() | nil,
          adapter_args: [String.t()],
          adapter_env: [{String.t(), String.t()}],
          python_executable: String.t() | nil,
          max_queue_size: pos_integer(),
          queue_timeout_ms: non_neg_integer(),
          request_timeout: timeout(),
          stream_timeout: timeout(),
          affinity_ttl_ms: pos_integer(),
          max_affinity_entries: pos_integer(),
          abandon_grace_ms: non_neg_integer() | :infinity | nil,
          max_message_bytes: pos_integer(),
          process_group_kill: boolean(),
          worker_ready_timeout: pos_integer(),
          graceful_shutdown_timeout_ms: non_neg_integer(),
          crash_barrier: Snakepit.CrashBarrier.t(),
          error_counter: :counters.counters_ref()
        }

  @doc false
  @spec defaults(keyword(), Snakepit.Config.t()) :: map()
  def defaults(env, global) do
    %{
      pool_size:
        Keyword.get(env, :pool_size) ||
          Keyword.get(env, :default_pool_size, System.schedulers_online() * 2),
      max_workers: Keyword.get(env, :pool_max_workers, 150),
      worker_profile: Keyword.get(env, :default_worker_profile, :process),
      threads_per_worker: Keyword.get(env, :config_default_threads_per_worker, 10),
      affinity: Keyword.get(env, :affinity, :hint),
      # Upstream's resolution: the pool's own key, then legacy pool_config, then global.
      adapter_module:
        Map.get(Map.new(Keyword.get(env, :pool_config, %{})), :adapter_module) ||
          Keyword.get(env, :adapter_module),
      python_executable: Keyword.get(env, :python_executable),
      capacity_strategy:
        Keyword.get(env, :capacity_strategy) ||
          Keyword.get(env, :default_capacity_strategy, :pool),
      affinity_ttl_ms: global.session_default_ttl * 1000,
      max_affinity_entries: Keyword.get(env, :max_affinity_entries, 100_000),
      abandon_grace_ms: Keyword.get(env, :abandon_grace_ms),
      max_message_bytes: Keyword.get(env, :max_message_bytes, 100 * 1024 * 1024),
      process_group_kill: Keyword.get(env, :process_group_kill, true),
      max_queue_size: global.max_queue_size,
      queue_timeout_ms: global.queue_timeout,
      request_timeout: global.request_timeout,
      stream_timeout: global.stream_timeout,
      worker_ready_timeout: global.worker_ready_timeout,
      graceful_shutdown_timeout_ms: global.graceful_shutdown_timeout_ms,
      global_crash_barrier: Snakepit.CrashBarrier.global(env)
    }
  end

  @doc false
  @spec normalize(map() | keyword(), pos_integer(), map()) :: {:ok, t()} | {:error, [String.t()]}
  def normalize(pool, index, defaults) when is_list(pool) or is_map(pool) do
    pool = Map.new(pool)

    case name(pool) do
      {:ok, name} -> normalize_named(pool, name, defaults)
      {:error, message} -> {:error, ["pool ##{index}: #{message}"]}
    end
  end

  def normalize(pool, index, _defaults) do
    {:error, ["pool ##{index}: invalid pool config #{inspect(pool)} (expected a map)"]}
  end

  defp name(%{name: name}) when is_atom(name) and name not in [nil, true, false],
    do: {:ok, name}

  defp name(%{name: name}) when is_binary(name) and name != "", do: {:ok, String.to_atom(name)}
  defp name(%{name: name}), do: {:error, "invalid :name #{inspect(name)} (expected an atom)"}
  defp name(_), do: {:error, "missing required key :name"}

  # Keys a pool map may carry besides the defaults' (upstream's per-pool keys, contract §3.3).
  @extra_keys ~w(name adapter_args adapter_env adapter_spec heartbeat crash_barrier
                 startup_batch_size startup_batch_delay_ms thread_safety_checks worker_ttl
                 worker_max_requests memory_threshold_mb)a

  defp normalize_named(pool, name, defaults) do
    warn_unknown_keys(pool, name, defaults)
    merged = Map.merge(defaults, pool)
    key = fn k -> "#{inspect(k)} for pool #{inspect(name)}" end

    profile = merged.worker_profile
    threads = merged.threads_per_worker
    adapter_env = adapter_env(merged[:adapter_env] || [])

    errors =
      check(:pos_integer, key.(:pool_size), merged.pool_size) ++
        check(:pos_integer, key.(:max_workers), merged.max_workers) ++
        check(:pos_integer, key.(:threads_per_worker), threads) ++
        affinity_error(merged.affinity, key.(:affinity)) ++
        profile_error(profile, key.(:worker_profile)) ++
        capacity_strategy_error(merged.capacity_strategy, key.(:capacity_strategy)) ++
        check(:pos_integer, key.(:affinity_ttl_ms), merged.affinity_ttl_ms) ++
        check(:pos_integer, key.(:max_affinity_entries), merged.max_affinity_entries) ++
        check(:pos_integer, key.(:max_message_bytes), merged.max_message_bytes) ++
        grace_error(merged.abandon_grace_ms, key.(:abandon_grace_ms)) ++
        args_error(merged[:adapter_args], key.(:adapter_args)) ++
        env_error(adapter_env, key.(:adapter_env)) ++
        executable_error(merged.python_executable, key.(:python_executable))

    crash_barrier =
      Snakepit.CrashBarrier.build(merged.global_crash_barrier, merged[:crash_barrier])

    errors = errors ++ crash_barrier_errors(crash_barrier, name)

    if errors == [] do
      {:ok, merged |> Map.put(:crash_barrier, elem(crash_barrier, 1)) |> build(name, adapter_env)}
    else
      {:error, errors}
    end
  end

  defp build(merged, name, {:ok, adapter_env}) do
    thread? = merged.worker_profile == :thread

    capacity =
      cond do
        merged.capacity_strategy == :profile -> 1
        thread? -> merged.threads_per_worker
        true -> 1
      end

    %{
      name: name,
      pool_size: min(merged.pool_size, merged.max_workers),
      worker_profile: merged.worker_profile,
      threads_per_worker: merged.threads_per_worker,
      capacity: capacity,
      affinity: parse_affinity(merged.affinity),
      adapter_module: merged.adapter_module,
      adapter_args: adapter_args(merged, thread?),
      adapter_env: adapter_env,
      python_executable: merged.python_executable,
      max_queue_size: merged.max_queue_size,
      queue_timeout_ms: merged.queue_timeout_ms,
      request_timeout: merged.request_timeout,
      stream_timeout: merged.stream_timeout,
      affinity_ttl_ms: merged.affinity_ttl_ms,
      max_affinity_entries: merged.max_affinity_entries,
      abandon_grace_ms: merged.abandon_grace_ms,
      max_message_bytes: merged.max_message_bytes,
      process_group_kill: merged.process_group_kill == true,
      worker_ready_timeout: merged.worker_ready_timeout,
      graceful_shutdown_timeout_ms: merged.graceful_shutdown_timeout_ms,
      crash_barrier: merged.crash_barrier,
      # `errors` of get_stats/1,2, bumped by callers (Snakepit.Pool.ErrorCounter).
      error_counter: Snakepit.Pool.ErrorCounter.new()
    }
  end

  # Process profile: the user's args, else the adapter module's script_args/0, else showcase.
  # Thread profile: `--adapter <spec> --max-workers N` under the user's args (user flags win).
  defp adapter_args(merged, thread?) do
    user_args =
      case merged[:adapter_args] do
        args when is_list(args) and args != [] -> Enum.map(args, &to_string/1)
        _ -> module_script_args(merged.adapter_module)
      end

    if thread? do
      spec = merged[:adapter_spec] || Defaults.threaded_adapter()
      defaults = [{"--adapter", spec}, {"--max-workers", "#{merged.threads_per_worker}"}]

      Enum.reduce(defaults, user_args, fn {flag, value}, args ->
        if flag in args, do: args, else: args ++ [flag, value]
      end)
    else
      if user_args == [], do: Defaults.adapter_args(), else: user_args
    end
  end

  defp module_script_args(nil), do: []

  defp module_script_args(module) do
    if Code.ensure_loaded?(module) and function_exported?(module, :script_args, 0) do
      Enum.map(module.script_args() || [], &to_string/1)
    else
      []
    end
  end

  defp adapter_env(env) when is_map(env) or is_list(env) do
    Enum.reduce_while(env, {:ok, []}, fn
      {k, v}, {:ok, acc} when (is_binary(k) or is_atom(k)) and not is_nil(v) ->
        {:cont, {:ok, acc ++ [{to_string(k), to_string(v)}]}}

      other, _ ->
        {:halt, {:error, other}}
    end)
  end

  defp adapter_env(other), do: {:error, other}

  defp profile_error(profile, _key) when profile in [:process, :thread], do: []

  defp profile_error(profile, key),
    do: ["invalid #{key}: #{inspect(profile)} (expected :process or :thread)"]

  defp capacity_strategy_error(strategy, _key) when strategy in [:pool, :profile, :hybrid],
    do: []

  defp capacity_strategy_error(strategy, key),
    do: ["invalid #{key}: #{inspect(strategy)} (expected :pool, :profile or :hybrid)"]

  defp crash_barrier_errors({:ok, _}, _name), do: []

  defp crash_barrier_errors({:error, errors}, name),
    do: Enum.map(errors, &"#{&1} for pool #{inspect(name)}")

  defp grace_error(nil, _key), do: []
  defp grace_error(:infinity, _key), do: []
  defp grace_error(value, key), do: check(:non_neg_integer, key, value)

  defp args_error(nil, _key), do: []

  defp args_error(args, key) do
    if is_list(args) and Enum.all?(args, &(is_binary(&1) or is_atom(&1) or is_number(&1))),
      do: [],
      else: ["invalid #{key}: #{inspect(args)} (expected a list of strings)"]
  end

  defp env_error({:ok, _}, _key), do: []

  defp env_error({:error, entry}, key),
    do: ["invalid #{key}: #{inspect(entry)} (expected {name, value} pairs or a map)"]

  defp executable_error(nil, _key), do: []
  defp executable_error(path, _key) when is_binary(path) and path != "", do: []

  defp executable_error(path, key),
    do: ["invalid #{key}: #{inspect(path)} (expected a path string)"]

  # A misspelt key (`pool_szie: 1`) would otherwise be ignored without a trace and the pool
  # started with the default; name it, with the closest known key.
  defp warn_unknown_keys(pool, name, defaults) do
    known = Map.keys(defaults) ++ @extra_keys

    for key <- Map.keys(pool), key not in known do
      best = Enum.max_by(known, &similarity(&1, key))
      hint = if similarity(best, key) > 0.8, do: " (did you mean #{inspect(best)}?)", else: ""

      Logger.warning("Snakepit: unknown key #{inspect(key)} in pool #{inspect(name)}#{hint}")
    end

    :ok
  end

  defp similarity(a, b), do: String.jaro_distance(to_string(a), to_string(b))
end
