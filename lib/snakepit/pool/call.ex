defmodule Snakepit.Pool.Call do
  @moduledoc false
  # The unary request path, run entirely in the caller process:
  #
  #   lookup pool (persistent_term) -> Native.pool_submit (returns at once)
  #   -> receive {:snakepit_reply, ref, result} | after timeout: pool_cancel + flush
  #
  # No GenServer is involved; the NIF monitors the caller itself, so a caller that dies
  # mid-request is cancelled without help from Elixir.

  alias Snakepit.{Error, Native, Pool}
  alias Snakepit.Pool.{Args, ErrorCounter, Options}

  @max_receive_timeout 4_294_967_295

  @spec execute(String.t(), term(), keyword()) :: {:ok, term()} | {:error, Error.t()}
  # Options are a keyword list, as everywhere in Elixir; anything else (a map, say) is a bad
  # argument the caller gets back as an error, not a FunctionClauseError from deep inside.
  def execute(command, _args, opts) when not is_list(opts), do: invalid_opts(command, opts)

  def execute(command, args, opts) do
    started = System.monotonic_time()
    pool_name = Options.pool_name(opts)
    meta = %{command: command, pool: Pool, pool_name: pool_name}

    result =
      with {:ok, {resource, config}} <- Pool.lookup(pool_name) do
        ErrorCounter.record(not_initialized(run(resource, config, command, args, opts)), config)
      end

    result = Error.normalize_public_result(result, meta)
    emit(started, command, pool_name, result)
    result
  end

  defp run(resource, config, command, args, opts) do
    with :ok <- initialized(config),
         {:ok, command} <- Options.command(command),
         {:ok, timeout} <- timeout(opts, config.request_timeout),
         {:ok, args} <- Options.args(args),
         {:ok, args, nif_opts} <- Options.build(args, opts, timeout, false),
         nif_opts = Map.put(nif_opts, :retry_on_crash, crash_retries(config, opts, args)),
         ref = make_ref(),
         {:ok, request_id} <- submit(resource, ref, command, args, nif_opts) do
      await(resource, ref, request_id, timeout, command)
    end
  end

  @doc false
  # Native.pool_submit/5; a refusal because of a struct (Date, Decimal, MapSet, ...) is retried
  # once with the structs converted as Jason would (Snakepit.Pool.Args), so plain calls never
  # walk their arguments in Elixir.
  @spec submit(reference(), reference(), String.t(), map(), map()) ::
          {:ok, non_neg_integer()} | {:error, term()}
  def submit(resource, ref, command, args, nif_opts) do
    result = native_submit(resource, ref, command, args, nif_opts)

    with true <- Args.struct_refusal?(result),
         converted when converted != args <- Args.convert(args) do
      native_submit(resource, ref, command, converted, nif_opts)
    else
      _ -> result
    end
  end

  # The options are validated in Elixir first; an option the NIF still refuses (it raises, as
  # any NIF given a bad argument) must reach the caller as an error tuple, not an exception.
  defp native_submit(resource, ref, command, args, nif_opts) do
    Native.pool_submit(resource, ref, command, args, nif_opts)
  rescue
    e in ErlangError ->
      case e.original do
        {:invalid_option, key, message} -> {:error, {:invalid_parameter, key, message}}
        _ -> reraise e, __STACKTRACE__
      end
  end

  # Resubmissions after a worker crash (Snakepit.CrashBarrier); the NIF never moves a strict
  # session's call.
  defp crash_retries(config, opts, args) do
    barrier = Map.get(config, :crash_barrier) || Snakepit.CrashBarrier.defaults()
    Snakepit.CrashBarrier.retries(barrier, opts, args)
  end

  @doc false
  # The error for options that are not a keyword list (unary calls and streams).
  @spec invalid_opts(term(), term()) :: {:error, Error.t()}
  def invalid_opts(command, opts) do
    Error.normalize_public_result(
      {:error, {:invalid_parameter, :opts, opts}},
      %{command: command, pool: Pool}
    )
  end

  @doc false
  @spec initialized(map()) :: :ok | {:error, :pool_not_initialized}
  def initialized(config) do
    # A pool whose workers all failed to start answers at once instead of queueing until the
    # queue timeout (upstream v0.12+ behaviour).
    if Pool.status(config) == :init_failed, do: {:error, :pool_not_initialized}, else: :ok
  end

  @doc false
  # Calls already queued when the pool found that every worker failed to start (or submitted
  # at that instant) are answered by the NIF with {:pool, :no_workers_available}
  # (Snakepit.Pool calls Native.pool_fail_queued/1 as it marks the pool failed, the only source
  # of that reason): they get the same error as the calls made afterwards.
  @spec not_initialized(term()) :: term()
  def not_initialized({:error, {:pool, :no_workers_available}}),
    do: {:error, :pool_not_initialized}

  def not_initialized(result), do: result

  @doc false
  @spec timeout(keyword(), timeout()) :: {:ok, timeout()} | {:error, term()}
  def timeout(opts, default) do
    # The configured default passes the same checks (a pool_request_timeout beyond receive's
    # limit means :infinity too).
    case Keyword.get(opts, :timeout) do
      nil -> check_timeout(default)
      given -> check_timeout(given)
    end
  end

  defp check_timeout(timeout) do
    case timeout do
      :infinity -> {:ok, :infinity}
      # `receive ... after` takes at most 2^32 - 1 ms (about 50 days): longer means forever.
      ms when is_integer(ms) and ms > @max_receive_timeout -> {:ok, :infinity}
      ms when is_integer(ms) and ms >= 0 -> {:ok, ms}
      other -> {:error, {:invalid_parameter, :timeout, other}}
    end
  end

  defp await(resource, ref, request_id, timeout, command) do
    receive do
      # The NIF enforces the same deadline (timeout_ms) and may answer just before `after`
      # fires; both mean the caller's timeout passed, so both give the same error.
      {:snakepit_reply, ^ref, {:error, {:grpc, :deadline_exceeded, _}}} ->
        {:error, timeout_error(timeout, command)}

      # A result holding a map with more than 128 keys comes as external term format (the NIF
      # cannot build it off a scheduler thread, erlang/otp#8208); decoded here, it is the same term.
      {:snakepit_reply, ^ref, {:etf, etf}} ->
        :erlang.binary_to_term(etf)

      {:snakepit_reply, ^ref, result} ->
        result
    after
      timeout ->
        Native.pool_cancel(resource, request_id)
        flush(ref)
        {:error, timeout_error(timeout, command)}
    end
  end

  @doc false
  @spec timeout_error(timeout(), String.t()) :: Error.t()
  def timeout_error(timeout, command) do
    Error.timeout_error("Pool execute timed out", %{timeout_ms: timeout, command: command})
  end

  # A reply that raced the timeout must not stay in the caller's mailbox.
  @doc false
  @spec flush(reference()) :: :ok
  def flush(ref) do
    receive do
      {:snakepit_reply, ^ref, _} -> flush(ref)
      {:snakepit_chunk, ^ref, _, _, _} -> flush(ref)
      {:snakepit_chunk_etf, ^ref, _} -> flush(ref)
    after
      0 -> :ok
    end
  end

  defp emit(started, command, pool_name, result),
    do: emit_executed(started, %{pool: pool_name, command: command, success: ok?(result)})

  defp ok?({:ok, _}), do: true
  defp ok?(_), do: false

  # `[:snakepit, :request, :executed]` from the caller's process, for unary calls and streams.
  @doc false
  @spec emit_executed(integer(), map()) :: :ok
  def emit_executed(started, metadata) do
    Snakepit.Telemetry.execute(
      [:snakepit, :request, :executed],
      %{
        duration_us:
          System.convert_time_unit(System.monotonic_time() - started, :native, :microsecond)
      },
      Map.put(metadata, :worker_id, nil)
    )
  end
end
