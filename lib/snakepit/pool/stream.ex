defmodule Snakepit.Pool.Stream do
  @moduledoc false
  # The streaming request path, run in the caller process. The NIF sends
  #   {:snakepit_chunk, ref, payload, is_final, metadata} ... then {:snakepit_reply, ref, :done | {:error, r}}
  # and keeps at most `stream_window` chunks in flight: each processed chunk is acknowledged with
  # pool_stream_ack/3, so a slow callback slows the Python producer instead of filling the
  # caller's mailbox.
  #
  # Unlike upstream, the callback runs in the caller (not in a task of the worker).

  alias Snakepit.{Error, Native, Pool}
  alias Snakepit.Pool.{Call, ErrorCounter, Options}

  @spec execute(String.t(), term(), (map() -> term()), keyword()) :: :ok | {:error, Error.t()}
  def execute(command, _args, _callback, opts) when not is_list(opts),
    do: Call.invalid_opts(command, opts)

  def execute(command, args, callback, opts) when is_function(callback, 1) do
    started = System.monotonic_time()
    pool_name = Options.pool_name(opts)
    meta = %{command: command, pool: Pool, pool_name: pool_name}

    result =
      with {:ok, {resource, config}} <- Pool.lookup(pool_name) do
        resource
        |> run(config, command, args, callback, opts)
        |> Call.not_initialized()
        |> ErrorCounter.record(config)
      end

    result = Error.normalize_public_result(result, meta)
    emit(started, command, pool_name, result)
    result
  end

  def execute(command, _args, callback, _opts) do
    Error.normalize_public_result(
      {:error, {:invalid_parameter, :callback, callback}},
      %{command: command, pool: Pool}
    )
  end

  defp run(resource, config, command, args, callback, opts) do
    with :ok <- Call.initialized(config),
         {:ok, command} <- Options.command(command),
         {:ok, timeout} <- Call.timeout(opts, config.stream_timeout),
         {:ok, args} <- Options.args(args),
         {:ok, args, nif_opts} <- Options.build(args, opts, timeout, true),
         ref = make_ref(),
         {:ok, request_id} <- Call.submit(resource, ref, command, args, nif_opts) do
      request = %{resource: resource, ref: ref, id: request_id, command: command}
      consume(request, callback, deadline(timeout), timeout)
    end
  end

  defp consume(request, callback, deadline, timeout) do
    %{ref: ref} = request

    receive do
      {:snakepit_chunk, ^ref, payload, is_final, metadata} ->
        on_chunk(request, callback, deadline, timeout, chunk(payload, is_final, metadata))

      # Chunks and replies holding a map with more than 128 keys come as external term format
      # (the NIF cannot build them off a scheduler thread, erlang/otp#8208).
      {:snakepit_chunk_etf, ^ref, etf} ->
        {payload, is_final, metadata} = :erlang.binary_to_term(etf)
        on_chunk(request, callback, deadline, timeout, chunk(payload, is_final, metadata))

      {:snakepit_reply, ^ref, {:etf, etf}} ->
        case :erlang.binary_to_term(etf) do
          {:ok, _} -> :ok
          {:error, _} = error -> error
        end

      {:snakepit_reply, ^ref, :done} ->
        :ok

      {:snakepit_reply, ^ref, {:error, {:grpc, :deadline_exceeded, _}}} ->
        {:error, Call.timeout_error(timeout, request.command)}

      {:snakepit_reply, ^ref, {:ok, _}} ->
        :ok

      {:snakepit_reply, ^ref, {:error, _} = error} ->
        error
    after
      remaining(deadline) ->
        stop(request)
        {:error, Call.timeout_error(timeout, request.command)}
    end
  end

  defp on_chunk(request, callback, deadline, timeout, chunk) do
    case run_callback(callback, chunk) do
      :halt ->
        stop(request)
        :ok

      {:halt, reason} ->
        stop(request)
        {:error, reason}

      {:callback_exception, _, _} = failure ->
        stop(request)
        {:error, failure}

      _continue ->
        Native.pool_stream_ack(request.resource, request.id, 1)
        next_chunk(request, callback, deadline, timeout)
    end
  end

  # The timeout bounds the whole stream: with chunks already waiting in the mailbox the
  # `after` of `consume/4` never fires, so the deadline is checked between callbacks too.
  defp next_chunk(request, callback, deadline, timeout) do
    if remaining(deadline) == 0 do
      stop(request)
      {:error, Call.timeout_error(timeout, request.command)}
    else
      consume(request, callback, deadline, timeout)
    end
  end

  defp stop(request) do
    Native.pool_cancel(request.resource, request.id)
    Call.flush(request.ref)
  end

  defp run_callback(callback, chunk) do
    callback.(chunk)
  rescue
    exception -> {:callback_exception, exception, __STACKTRACE__}
  catch
    kind, reason -> {:callback_exception, {kind, reason}, __STACKTRACE__}
  end

  @doc false
  # The callback argument, as upstream builds it: a JSON object payload is the map itself, an
  # empty payload is %{}, any other JSON value is %{"data" => value}, undecodable bytes are
  # base64; then "is_final" and (when non-empty) "_metadata" are added.
  @spec chunk(term(), boolean(), map() | nil) :: map()
  def chunk(payload, is_final, metadata) do
    base =
      case payload do
        nil -> %{}
        map when is_map(map) -> map
        {:binary, bytes} -> %{"raw_data_base64" => Base.encode64(bytes)}
        other -> %{"data" => other}
      end

    base = Map.put(base, "is_final", is_final)

    if is_map(metadata) and map_size(metadata) > 0,
      do: Map.put(base, "_metadata", metadata),
      else: base
  end

  defp emit(started, command, pool_name, result) do
    Snakepit.Pool.Call.emit_executed(started, %{
      pool: pool_name,
      command: command,
      success: result == :ok,
      streaming: true
    })
  end

  defp deadline(:infinity), do: :infinity
  defp deadline(ms), do: System.monotonic_time(:millisecond) + ms

  defp remaining(:infinity), do: :infinity
  defp remaining(deadline), do: max(deadline - System.monotonic_time(:millisecond), 0)
end
