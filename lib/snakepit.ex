defmodule Snakepit do
  @moduledoc """
  Pools of Python worker processes, called from Elixir.

  A drop-in replacement for the public API of Snakepit v0.13: the same functions, options,
  configuration keys and result/error shapes. Inside, the scheduler (checkout, queue, session
  affinity) and the gRPC transport to the workers live in a Rust NIF: `execute/3` submits from the
  calling process straight into the NIF and receives the reply as a message, so no pool process
  sits in the request path.

  ## Configuration

      config :snakepit,
        pooling_enabled: true,
        pools: [
          %{name: :default, pool_size: 4, adapter_args: ["--adapter", "my_app.adapter.MyAdapter"]}
        ]

  Several pools, each with its own size, adapter, worker profile and affinity mode, run side
  by side; calls choose one with `pool_name:` (the first pool is the default):

      config :snakepit,
        pooling_enabled: true,
        pools: [
          %{name: :default, pool_size: 4},
          %{name: :models, pool_size: 2, affinity: :strict_queue,
            adapter_args: ["--adapter", "my_app.models.ModelAdapter"],
            adapter_env: %{"CUDA_VISIBLE_DEVICES" => "0"}},
          %{name: :threads, pool_size: 1, worker_profile: :thread, threads_per_worker: 8}
        ]

      Snakepit.execute_in_session("user-1", "predict", %{x: 1}, pool_name: :models)

  The legacy single-pool keys work too (`pool_config: %{pool_size: 4}`, top-level `pool_size`,
  `adapter_module`, `adapter_args`; top-level `pool_size` wins). See `Snakepit.Config` for all
  keys; an invalid configuration stops the application from starting with a message naming
  the key.

  ## Errors

  Every failure is `{:error, %Snakepit.Error{}}`; see `Snakepit.Error` for the categories.
  """

  alias Snakepit.{Error, Pool}

  @typedoc "Options of the execute family (see `execute/3`)."
  @type opts :: keyword()

  @doc """
  Runs `command` (a Python tool name) with `args` on a worker of the pool.

  Options:

  * `:timeout` - ms or `:infinity` (default `pool_request_timeout`, 300 000 with the
    `:balanced` profile). On expiry the request is cancelled and the result is
    `{:error, %Snakepit.Error{category: :timeout, message: "Pool execute timed out"}}`.
  * `:pool_name` - pool to use (atom or string; default: the first configured pool). An
    unknown name gives `{:error, %Snakepit.Error{category: :pool, details: %{reason:
    :pool_not_found}}}`.
  * `:pool` - upstream's pool server option: `Snakepit.Pool` (default) or a pool name.
  * `:session_id` - session affinity key (see `execute_in_session/4`).
  * `:affinity` - per-call override of the pool's affinity mode: `:hint`, `:strict_queue`,
    `:strict_fail_fast` (strings accepted).
  * `:binary_parameters` - `%{name => binary}` sent as raw bytes.
  * `:correlation_id` - request metadata (generated when absent).
  * `:thread_sensitive` - `true` makes Python run a sync tool on its event-loop thread.
  * `:idempotent` - `true` (or a truthy `"idempotent"` argument, as upstream) lets the call be
    retried once on another worker if its worker crashes while running it; strict sessions are
    never moved (see `Snakepit.CrashBarrier`).

  ## Examples

      Snakepit.execute("ping", %{})
      #=> {:ok, %{"message" => "pong", "timestamp" => "1733245000.12"}}

      Snakepit.execute("add", %{a: 2, b: 3}, timeout: 5_000)
      #=> {:ok, 5}

      Snakepit.execute("ping", %{}, pool_name: :nope)
      #=> {:error, %Snakepit.Error{category: :pool, message: "Pool not found", ...}}
  """
  @spec execute(String.t(), map(), opts()) :: {:ok, term()} | {:error, Error.t()}
  def execute(command, args, opts \\ []), do: Pool.execute(command, args, opts)

  @doc """
  Like `execute/3` with `session_id: session_id`: calls of one session go to the same worker
  (per the pool's affinity mode), so Python state kept in that worker is found again.

      # showcase adapter: a counter kept per session in the worker's memory
      Snakepit.execute_in_session("user-42", "set_counter", %{value: 41})
      #=> {:ok, %{"counter" => 41, "session_id" => "user-42"}}
      Snakepit.execute_in_session("user-42", "increment_counter", %{})
      #=> {:ok, %{"counter" => 42, "session_id" => "user-42"}}
  """
  @spec execute_in_session(String.t(), String.t(), map(), opts()) ::
          {:ok, term()} | {:error, Error.t()}
  def execute_in_session(session_id, command, args, opts \\ []),
    do: execute(command, args, Keyword.put(opts, :session_id, session_id))

  @doc """
  Runs a streaming tool; `callback` is called in the calling process with each chunk, a map
  with `"is_final"` (non-map JSON payloads are wrapped as `%{"data" => value}`, non-JSON data
  as `%{"raw_data_base64" => ...}`, chunk metadata under `"_metadata"`).

  The callback may return `:halt` (stop, result `:ok`) or `{:halt, reason}` (stop, result
  `{:error, %Snakepit.Error{details: %{reason: reason}}}`); anything else continues. A raising
  callback stops the stream with reason `{:callback_exception, exception, stacktrace}`.

  Options are those of `execute/3` (`:pool_name`, `:session_id`, `:affinity`, ...) plus
  `:stream_window` (default 16). Default `:timeout` is `pool_streaming_timeout` (900 000 ms), for
  the whole stream.

  * **Scheduling**: a stream is scheduled like a unary call: it obeys the pool's (or the
    call's) affinity mode and waits in the queue when no worker is free (upstream failed with
    `:no_workers_available` instead).
  * **Backpressure**: at most `:stream_window` chunks are in flight between the NIF and the
    callback; the NIF stops reading from the worker until the callback has consumed them, so a
    slow callback slows the Python generator (through HTTP/2 flow control) and memory stays
    bounded.
  * **Cancellation**: halting, a raising callback, the timeout and the death of the calling
    process cancel the RPC; the worker closes the Python generator (its `finally` blocks run).

      Snakepit.execute_stream("stream_progress", %{steps: 3, delay_ms: 10}, fn chunk ->
        IO.puts(chunk["message"])
      end)
      # Step 1/3
      # Step 2/3
      # Step 3/3
      #=> :ok
  """
  @spec execute_stream(String.t(), map(), (map() -> term()), opts()) :: :ok | {:error, Error.t()}
  def execute_stream(command, args \\ %{}, callback, opts \\ []) do
    ensure_started!()

    with :ok <- streaming_supported() do
      Pool.execute_stream(command, args, callback, opts)
    end
  end

  @doc "`execute_stream/4` with `session_id: session_id`."
  @spec execute_in_session_stream(String.t(), String.t(), map(), (map() -> term()), opts()) ::
          :ok | {:error, Error.t()}
  def execute_in_session_stream(session_id, command, args \\ %{}, callback, opts \\ []),
    do: execute_stream(command, args, callback, Keyword.put(opts, :session_id, session_id))

  @doc """
  Statistics of all pools (default) or of one pool (`get_stats(:pool_name)`): `requests`,
  `queued` (current queue length), `errors` (calls that returned `{:error, _}`; upstream
  always reported 0), `queue_timeouts`, `pool_saturated`, `workers`, `available`, `busy`, plus
  the scheduler's own counters. An unknown pool name gives `{:error, {:pool_not_found, name}}`.

      Snakepit.get_stats().workers
      #=> 4
  """
  @spec get_stats(atom()) :: map()
  def get_stats(pool \\ Pool), do: Pool.get_stats(pool)

  @doc """
  Ids of the ready workers of all pools (default) or of one pool (`list_workers(:pool_name)`).

      Snakepit.list_workers()
      #=> ["default_worker_1_1234", "default_worker_2_1240"]
  """
  @spec list_workers(atom()) :: [String.t()]
  def list_workers(pool \\ Pool), do: Pool.list_workers(pool)

  @doc """
  Kills the Python processes started by this VM (SIGTERM, then SIGKILL after 3 s).
  Returns `:ok` or `{:timeout, os_pids_still_alive}`.
  """
  @spec cleanup() :: :ok | {:timeout, [non_neg_integer()]}
  def cleanup, do: Snakepit.Script.cleanup()

  @doc """
  Starts Snakepit, waits for the pools, runs `fun` and shuts down again; for scripts
  (`mix run script.exs`) and Mix tasks.

  Options:

  * `:await_pool` - wait for the pools (default `pooling_enabled`); `:timeout` - for how long
    (15 000 ms).
  * `:stop_mode` - `:if_started` (default: stop only if this call started Snakepit),
    `:always`, `:never`; `:shutdown_timeout` - bound on the stop (15 000 ms).
  * `:cleanup_timeout` - after the stop, Python processes of this run still alive are sent
    SIGTERM and, after this many ms, SIGKILL (5 000; 0 disables).
  * `:restart` - start Snakepit again after the stop: `true`, `false` or `:auto` (default:
    only with `stop_mode: :always` inside a Mix project).
  * `:exit_mode` - `:none` (default), `:stop`, `:halt`, `:auto` (`:stop` when this call
    started Snakepit and the VM runs with `--no-halt`); env `SNAKEPIT_SCRIPT_EXIT`. `:halt` is
    the legacy boolean (env `SNAKEPIT_SCRIPT_HALT`).

  Returns `fun`'s value; `{:error, :pool_initialization_timeout}` when the pools were not ready
  in time; `{:error, %Snakepit.Error{}}` when a pool failed to start (upstream raised a
  `CaseClauseError`). If `fun` raises, the shutdown runs (exit status 1) and the exception is
  re-raised.

      Snakepit.run_as_script(fn -> Snakepit.execute("ping", %{}) end)
      #=> {:ok, %{"message" => "pong", ...}}
  """
  @spec run_as_script((() -> result), keyword()) :: result | {:error, term()} when result: term()
  def run_as_script(fun, opts \\ []) when is_function(fun, 0), do: Snakepit.Script.run(fun, opts)

  # -- helpers -----------------------------------------------------------------------------------

  defp ensure_started! do
    if Process.whereis(Snakepit.Supervisor) == nil do
      case Application.ensure_all_started(:snakepit) do
        {:ok, _} -> :ok
        {:error, _} -> raise RuntimeError, "Snakepit application not started"
      end
    end

    :ok
  end

  # Upstream gates streaming on the global :adapter_module exporting uses_grpc?/0. The built-in
  # Python bridge (no adapter module configured) always streams.
  defp streaming_supported do
    case Application.get_env(:snakepit, :adapter_module) do
      nil ->
        :ok

      module ->
        if Code.ensure_loaded?(module) and function_exported?(module, :uses_grpc?, 0) and
             module.uses_grpc?() do
          :ok
        else
          {:error,
           Error.validation_error("Streaming not supported by adapter", %{adapter: module})}
        end
    end
  end
end
