defmodule Snakepit.Config do
  @moduledoc """
  Reads, normalizes and validates the `:snakepit` application environment.

  `load/1` returns a `%Snakepit.Config{}` with one normalized map per pool (see
  `Snakepit.Config.Pool`) or `{:error, message}` where the message names every offending key;
  the application refuses to start with that message.

  ## Modes

  * **Multi-pool**: `pools: [%{name: :default, pool_size: 4, ...}, ...]`. The first pool is the
    default pool (used when a call gives no `:pool_name`).
  * **Legacy single pool** (no `:pools`): one pool named `:default` built from `:pool_size`
    (wins over `pool_config.pool_size`), `:pool_config`, `:adapter_module`, `:adapter_args` and
    `:affinity`.

  ## Global keys

  `pooling_enabled` (false), `timeout_profile` (`:balanced`), `pool_request_timeout`,
  `pool_streaming_timeout`, `pool_queue_timeout`, `checkout_timeout` (profile derived, see
  `Snakepit.Defaults`), `pool_max_queue_size` (1000), `pool_await_ready_timeout` (15 000),
  `worker_ready_timeout` (30 000), `graceful_shutdown_timeout_ms` (6000), `default_pool_size`
  (`System.schedulers_online() * 2`), `pool_max_workers` (150), `affinity` (`:hint`),
  `python_executable` (env `SNAKEPIT_PYTHON`), `session_default_ttl` (3600 s),
  `session_cleanup_interval` (60 000 ms), `session_store: %{max_sessions: 10_000}`.

      iex> {:ok, config} = Snakepit.Config.load(pooling_enabled: true, pool_size: 2)
      iex> [pool] = config.pools
      iex> {pool.name, pool.pool_size, pool.affinity, pool.capacity}
      {:default, 2, :hint, 1}

      iex> Snakepit.Config.load(pools: [%{name: :a, pool_size: 0}])
      {:error, "invalid :pool_size for pool :a: 0 (expected a positive integer)"}
  """

  alias Snakepit.Config.Pool, as: PoolConfig
  alias Snakepit.Defaults

  @affinities [:hint, :strict_queue, :strict_fail_fast]

  defstruct pooling_enabled: false,
            pools: [],
            default_pool: :default,
            adapter_module: nil,
            timeout_profile: :balanced,
            request_timeout: 300_000,
            stream_timeout: 900_000,
            queue_timeout: 10_000,
            checkout_timeout: 10_000,
            max_queue_size: 1000,
            await_ready_timeout: 15_000,
            worker_ready_timeout: 30_000,
            graceful_shutdown_timeout_ms: 6000,
            session_default_ttl: 3600,
            session_cleanup_interval: 60_000,
            max_sessions: 10_000

  @type t :: %__MODULE__{
          pooling_enabled: boolean(),
          pools: [PoolConfig.t()],
          default_pool: atom(),
          adapter_module: module() | nil,
          timeout_profile: atom(),
          request_timeout: timeout(),
          stream_timeout: timeout(),
          queue_timeout: non_neg_integer(),
          checkout_timeout: non_neg_integer(),
          max_queue_size: pos_integer(),
          await_ready_timeout: non_neg_integer(),
          worker_ready_timeout: pos_integer(),
          graceful_shutdown_timeout_ms: non_neg_integer(),
          session_default_ttl: pos_integer(),
          session_cleanup_interval: pos_integer(),
          max_sessions: pos_integer() | :infinity
        }

  @doc """
  Loads the configuration from `env` (default: `Application.get_all_env(:snakepit)`).
  Returns `{:error, message}` naming each invalid key.
  """
  @spec load(keyword()) :: {:ok, t()} | {:error, String.t()}
  def load(env \\ Application.get_all_env(:snakepit)) do
    {global, global_errors} = global(env)
    {pools, pool_errors} = pools(env, global)

    case global_errors ++ pool_errors ++ duplicate_names(pools) do
      [] ->
        default = pools |> List.first(%{name: :default}) |> Map.fetch!(:name)
        {:ok, %{global | pools: pools, default_pool: default}}

      errors ->
        {:error, Enum.join(errors, "; ")}
    end
  end

  @doc "Parses an affinity mode (atom or case-insensitive string); nil when unknown."
  @spec parse_affinity(term()) :: :hint | :strict_queue | :strict_fail_fast | nil
  def parse_affinity(mode) when mode in @affinities, do: mode

  def parse_affinity(mode) when is_binary(mode) do
    Enum.find(@affinities, &(Atom.to_string(&1) == String.downcase(String.trim(mode))))
  end

  def parse_affinity(_), do: nil

  # -- global keys -------------------------------------------------------------------------------

  defp global(env) do
    profile_name = Keyword.get(env, :timeout_profile, :balanced)
    profile = Defaults.timeout_profile(profile_name)

    profile_error =
      if profile,
        do: [],
        else: [
          "invalid :timeout_profile #{inspect(profile_name)} " <>
            "(expected one of #{inspect(Enum.sort(Defaults.timeout_profiles()))})"
        ]

    profile = profile || Defaults.timeout_profile(:balanced)
    session_store = Map.new(Keyword.get(env, :session_store, %{}))

    checks = [
      {:pool_request_timeout, Keyword.get(env, :pool_request_timeout, profile.default_timeout),
       :timeout},
      {:pool_streaming_timeout, Keyword.get(env, :pool_streaming_timeout, profile.stream_timeout),
       :timeout},
      {:pool_queue_timeout, Keyword.get(env, :pool_queue_timeout, profile.queue_timeout),
       :non_neg_integer},
      {:checkout_timeout, Keyword.get(env, :checkout_timeout, profile.queue_timeout),
       :non_neg_integer},
      {:pool_max_queue_size, Keyword.get(env, :pool_max_queue_size, 1000), :pos_integer},
      {:pool_await_ready_timeout, Keyword.get(env, :pool_await_ready_timeout, 15_000),
       :non_neg_integer},
      {:worker_ready_timeout, Keyword.get(env, :worker_ready_timeout, 30_000), :pos_integer},
      {:graceful_shutdown_timeout_ms, Keyword.get(env, :graceful_shutdown_timeout_ms, 6000),
       :non_neg_integer},
      {:session_default_ttl, Keyword.get(env, :session_default_ttl, 3600), :pos_integer},
      {:session_cleanup_interval, Keyword.get(env, :session_cleanup_interval, 60_000),
       :pos_integer},
      {:"session_store.max_sessions", Map.get(session_store, :max_sessions, 10_000),
       :pos_integer_or_infinity},
      {:default_pool_size, Keyword.get(env, :default_pool_size, System.schedulers_online() * 2),
       :pos_integer},
      {:pool_max_workers, Keyword.get(env, :pool_max_workers, 150), :pos_integer}
    ]

    errors =
      profile_error ++
        Enum.flat_map(checks, fn {key, value, kind} -> check(kind, "#{inspect(key)}", value) end) ++
        affinity_error(Keyword.get(env, :affinity, :hint), ":affinity") ++
        boolean_error(Keyword.get(env, :pooling_enabled, false), ":pooling_enabled")

    values = Map.new(checks, fn {key, value, _} -> {key, value} end)

    config = %__MODULE__{
      pooling_enabled: Keyword.get(env, :pooling_enabled, false) == true,
      adapter_module: Keyword.get(env, :adapter_module),
      timeout_profile: profile_name,
      request_timeout: values.pool_request_timeout,
      stream_timeout: values.pool_streaming_timeout,
      queue_timeout: values.pool_queue_timeout,
      checkout_timeout: values.checkout_timeout,
      max_queue_size: values.pool_max_queue_size,
      await_ready_timeout: values.pool_await_ready_timeout,
      worker_ready_timeout: values.worker_ready_timeout,
      graceful_shutdown_timeout_ms: values.graceful_shutdown_timeout_ms,
      session_default_ttl: values.session_default_ttl,
      session_cleanup_interval: values.session_cleanup_interval,
      max_sessions: values."session_store.max_sessions"
    }

    {config, errors}
  end

  # -- pools -------------------------------------------------------------------------------------

  defp pools(env, global) do
    case Keyword.fetch(env, :pools) do
      {:ok, nil} -> legacy_pool(env, global)
      {:ok, []} -> normalize_pools([%{name: :default}], env, global)
      {:ok, pools} when is_list(pools) -> normalize_pools(pools, env, global)
      {:ok, other} -> {[], ["invalid :pools #{inspect(other)} (expected a list of pool maps)"]}
      :error -> legacy_pool(env, global)
    end
  end

  # Legacy mode: top-level :pool_size wins over pool_config.pool_size (upstream v0.13).
  defp legacy_pool(env, global) do
    pool_config = env |> Keyword.get(:pool_config, %{}) |> Map.new()

    base = %{
      name: :default,
      worker_profile: :process,
      adapter_module: Keyword.get(env, :adapter_module),
      affinity: Map.get(pool_config, :affinity, Keyword.get(env, :affinity, :hint))
    }

    pool =
      base
      |> Map.merge(pool_config)
      |> put_present(:pool_size, Keyword.get(env, :pool_size))
      |> put_new_present(:adapter_args, Keyword.get(env, :adapter_args))

    normalize_pools([pool], env, global)
  end

  defp normalize_pools(pools, env, global) do
    defaults = PoolConfig.defaults(env, global)

    pools
    |> Enum.with_index(1)
    |> Enum.map(fn {pool, index} -> PoolConfig.normalize(pool, index, defaults) end)
    |> Enum.reduce({[], []}, fn
      {:ok, pool}, {pools, errors} -> {[pool | pools], errors}
      {:error, pool_errors}, {pools, errors} -> {pools, errors ++ pool_errors}
    end)
    |> then(fn {pools, errors} -> {Enum.reverse(pools), errors} end)
  end

  defp duplicate_names(pools) do
    case pools |> Enum.frequencies_by(& &1.name) |> Enum.filter(fn {_, n} -> n > 1 end) do
      [] -> []
      dups -> ["duplicate pool names: #{inspect(Enum.map(dups, &elem(&1, 0)))}"]
    end
  end

  defp put_present(map, _key, nil), do: map
  defp put_present(map, key, value), do: Map.put(map, key, value)

  defp put_new_present(map, _key, nil), do: map
  defp put_new_present(map, key, value), do: Map.put_new(map, key, value)

  # -- checks (shared with Snakepit.Config.Pool) -------------------------------------------------

  @doc false
  @spec check(atom(), String.t(), term()) :: [String.t()]
  def check(:timeout, _key, :infinity), do: []
  def check(:timeout, key, value), do: check(:non_neg_integer, key, value, "or :infinity")
  def check(:non_neg_integer, key, value), do: check(:non_neg_integer, key, value, nil)
  def check(:pos_integer_or_infinity, _key, :infinity), do: []

  def check(:pos_integer_or_infinity, key, value),
    do: check(:pos_integer, key, value, "or :infinity")

  def check(:pos_integer, key, value), do: check(:pos_integer, key, value, nil)

  defp check(:non_neg_integer, _key, value, _) when is_integer(value) and value >= 0, do: []
  defp check(:pos_integer, _key, value, _) when is_integer(value) and value > 0, do: []

  defp check(kind, key, value, alt) do
    expected = if kind == :pos_integer, do: "a positive integer", else: "a non-negative integer"
    expected = if alt, do: "#{expected} #{alt}", else: expected
    ["invalid #{key}: #{inspect(value)} (expected #{expected})"]
  end

  @doc false
  @spec affinity_error(term(), String.t()) :: [String.t()]
  def affinity_error(value, key) do
    if parse_affinity(value),
      do: [],
      else: [
        "invalid #{key}: #{inspect(value)} (expected :hint, :strict_queue or :strict_fail_fast)"
      ]
  end

  defp boolean_error(value, _key) when is_boolean(value), do: []
  defp boolean_error(value, key), do: ["invalid #{key}: #{inspect(value)} (expected a boolean)"]
end
