defmodule Snakepit.CrashBarrier do
  @moduledoc """
  What happens after a worker's Python process crashes: which exits taint the slot, and which
  requests are retried on another worker.

  Configured globally (`config :snakepit, crash_barrier: [...]`, plus the legacy keys
  `crash_barrier_taint_duration_ms` and `crash_barrier_max_restarts`) and per pool
  (`crash_barrier: %{...}` in the pool map; pool keys win). Keys as upstream Snakepit:

  | Key | Default | Meaning |
  |---|---|---|
  | `enabled` | `false` | taint the slot of a worker that crashed with a classified exit |
  | `retry` | `:idempotent` | `:always`, `:never` or `:idempotent` (`true`/`false` = `:always`/`:never`; legacy `retry_idempotent: bool`) |
  | `max_restarts` (alias `max_retries`) | 1 | retries of one request after worker crashes |
  | `taint_duration_ms` | 60 000 | how long the slot's replacement worker gets no new work |
  | `mark_on` | `[:segfault, :oom, :gpu]` | classifications that taint (also `:abort`; strings accepted) |
  | `taint_on_exit_codes` | `[]` | further exit statuses that taint |
  | `backoff_ms`, `taint_on_error_types`, `taint_device_on_cuda_fatal` | | accepted for compatibility, not used |

  Exit statuses are classified as upstream: 139 → `:segfault`, 134 → `:abort`, 137 → `:oom`.

  ## Differences from upstream (deliberate)

  * **Tainting.** A crashed worker is removed from the scheduler at once and replaced by a worker
    with a *new* id (fresh Python memory), so there is no crashed id left to taint. With
    `enabled: true`, the *replacement* of a worker whose exit is classified is tainted for
    `taint_duration_ms` once it is ready: the slot that just crashed hard gets no new unpinned
    work while other workers can take it. The taint is skipped when no other untainted worker
    is ready, because a pool with no usable worker would only turn every call into a queue
    timeout.
  * **Retry.** The retry policy applies whether or not `enabled` is set, so a request marked
    idempotent (`idempotent: true` in the call options, or an `"idempotent"`/`:idempotent`
    argument that is truthy, as upstream) is retried by default, once, on another worker, when
    its worker crashes while running it, whatever the exit status (the call cannot wait for
    the classification, and an idempotent call is safe to repeat). Only session-less calls and
    `:hint` sessions are retried: a call of a strict session is never moved and gets
    `:session_worker_unavailable` instead (a strict call that may not be retried gets the
    worker's exit, like any other).
    The retry happens inside the NIF (`retry_on_crash` submit option) as soon as the worker is
    known to be gone; `backoff_ms` is not used. `retry: :never` disables it.
  """

  @type classification :: :segfault | :abort | :oom | :gpu | {:exit_code, integer()}

  @type t :: %{
          enabled: boolean(),
          retry: :always | :never | :idempotent,
          max_restarts: non_neg_integer(),
          taint_duration_ms: non_neg_integer(),
          mark_on: [atom()],
          taint_on_exit_codes: [integer()]
        }

  @classifications [:segfault, :abort, :oom, :gpu]
  @exit_classes %{139 => :segfault, 134 => :abort, 137 => :oom}

  @defaults %{
    enabled: false,
    retry: :idempotent,
    max_restarts: 1,
    taint_duration_ms: 60_000,
    mark_on: [:segfault, :oom, :gpu],
    taint_on_exit_codes: []
  }

  @doc "The default settings."
  @spec defaults() :: t()
  def defaults, do: @defaults

  @doc """
  The global settings from the application environment (`crash_barrier` and the legacy
  `crash_barrier_*` keys), unvalidated.
  """
  @spec global(keyword()) :: map() | {:error, term()}
  def global(env) do
    legacy =
      [
        taint_duration_ms: Keyword.get(env, :crash_barrier_taint_duration_ms),
        max_restarts: Keyword.get(env, :crash_barrier_max_restarts)
      ]
      |> Enum.reject(fn {_k, v} -> is_nil(v) end)
      |> Map.new()

    case Keyword.get(env, :crash_barrier, []) |> to_map() do
      :error -> {:error, Keyword.get(env, :crash_barrier)}
      map -> Map.merge(legacy, map)
    end
  end

  @doc """
  Merges the pool's `crash_barrier` over the global settings and validates them.

      iex> {:ok, cb} = Snakepit.CrashBarrier.build(%{}, %{enabled: true, retry: false})
      iex> {cb.enabled, cb.retry, cb.max_restarts}
      {true, :never, 1}

      iex> Snakepit.CrashBarrier.build(%{}, %{max_restarts: -1})
      {:error, ["invalid crash_barrier.max_restarts: -1 (expected a non-negative integer)"]}
  """
  @spec build(map() | {:error, term()}, term()) :: {:ok, t()} | {:error, [String.t()]}
  def build({:error, global}, _pool), do: {:error, [shape_error(global)]}

  def build(global, pool) do
    case to_map(pool || %{}) do
      :error ->
        {:error, [shape_error(pool)]}

      pool_map ->
        @defaults
        |> Map.merge(normalize_keys(global))
        |> Map.merge(normalize_keys(pool_map))
        |> validate()
    end
  end

  defp shape_error(value),
    do: "invalid crash_barrier: #{inspect(value)} (expected a map or keyword list)"

  @doc """
  Classifies an exit status (or `{:exit_status, n}` reason): `:segfault`, `:abort`, `:oom` or
  `{:exit_code, n}`; nil for anything that is not an exit status.

      iex> Snakepit.CrashBarrier.classify({:exit_status, 139})
      :segfault
      iex> Snakepit.CrashBarrier.classify(1)
      {:exit_code, 1}
  """
  @spec classify(term()) :: classification() | nil
  def classify({:exit_status, status}), do: classify(status)
  def classify({:grpc_server_exited, status}), do: classify(status)

  def classify(status) when is_integer(status),
    do: Map.get(@exit_classes, status, {:exit_code, status})

  def classify(_), do: nil

  @doc "The exit status inside a worker exit reason, or nil."
  @spec exit_code(term()) :: integer() | nil
  def exit_code({:exit_status, status}) when is_integer(status), do: status
  def exit_code({:grpc_server_exited, status}) when is_integer(status), do: status
  def exit_code({:shutdown, reason}), do: exit_code(reason)
  def exit_code(_), do: nil

  @doc """
  Whether a worker that exited with `reason` taints its slot under `config`.

      iex> {:ok, cb} = Snakepit.CrashBarrier.build(%{}, %{enabled: true})
      iex> {Snakepit.CrashBarrier.taint?(cb, {:exit_status, 139}), Snakepit.CrashBarrier.taint?(cb, {:exit_status, 1})}
      {true, false}
  """
  @spec taint?(t(), term()) :: boolean()
  def taint?(%{enabled: false}, _reason), do: false

  def taint?(config, reason) do
    case {exit_code(reason), classify(exit_code(reason))} do
      {nil, _} -> false
      {code, {:exit_code, _}} -> code in config.taint_on_exit_codes
      {code, class} -> class in config.mark_on or code in config.taint_on_exit_codes
    end
  end

  @doc """
  How many times the NIF may resubmit a unary call after its worker crashed while running it
  (the `retry_on_crash` submit option): `max_restarts` when the policy allows it for this call,
  else 0. The NIF never moves a call of a strict session: such a call gets
  `:session_worker_unavailable` instead of a retry.

      iex> cb = Snakepit.CrashBarrier.defaults()
      iex> Snakepit.CrashBarrier.retries(cb, [idempotent: true], %{})
      1
      iex> Snakepit.CrashBarrier.retries(cb, [], %{"idempotent" => true})
      1
      iex> Snakepit.CrashBarrier.retries(cb, [], %{})
      0
  """
  @spec retries(t(), keyword(), map()) :: non_neg_integer()
  def retries(config, opts, args) do
    allowed? =
      case config.retry do
        :always -> true
        :idempotent -> idempotent?(opts, args)
        :never -> false
      end

    if allowed?, do: config.max_restarts, else: 0
  end

  defp idempotent?(opts, args) do
    truthy?(Keyword.get(opts, :idempotent)) or truthy?(Map.get(args, "idempotent")) or
      truthy?(Map.get(args, :idempotent))
  end

  defp truthy?(value), do: value not in [nil, false, "false", 0]

  # -- normalization -----------------------------------------------------------------------------

  defp to_map(value) when is_map(value), do: value

  defp to_map(value) when is_list(value) do
    if Keyword.keyword?(value), do: Map.new(value), else: :error
  end

  defp to_map(_), do: :error

  defp normalize_keys(map) do
    map
    |> Map.new(fn {k, v} -> {key(k), v} end)
    |> alias_key(:max_retries, :max_restarts)
    |> legacy_retry()
  end

  defp key(k) when is_binary(k) do
    String.to_existing_atom(k)
  rescue
    ArgumentError -> k
  end

  defp key(k), do: k

  defp alias_key(map, from, to) do
    case Map.pop(map, from) do
      {nil, map} -> map
      {value, map} -> Map.put(map, to, value)
    end
  end

  defp legacy_retry(map) do
    case Map.pop(map, :retry_idempotent) do
      {nil, map} -> map
      {true, map} -> Map.put_new(map, :retry, :idempotent)
      {_, map} -> Map.put_new(map, :retry, :never)
    end
  end

  defp validate(merged) do
    retry = parse_retry(merged.retry)
    mark_on = parse_mark_on(merged.mark_on)

    errors =
      bool_error(merged.enabled, :enabled) ++
        if(retry, do: [], else: [error(:retry, merged.retry, ":always, :never or :idempotent")]) ++
        int_error(merged.max_restarts, :max_restarts) ++
        int_error(merged.taint_duration_ms, :taint_duration_ms) ++
        if(mark_on,
          do: [],
          else: [error(:mark_on, merged.mark_on, "a list of #{inspect(@classifications)}")]
        ) ++
        codes_error(merged.taint_on_exit_codes)

    if errors == [] do
      {:ok,
       %{
         enabled: merged.enabled,
         retry: retry,
         max_restarts: merged.max_restarts,
         taint_duration_ms: merged.taint_duration_ms,
         mark_on: mark_on,
         taint_on_exit_codes: merged.taint_on_exit_codes
       }}
    else
      {:error, errors}
    end
  end

  defp parse_retry(value) when value in [:always, :never, :idempotent], do: value
  defp parse_retry(true), do: :always
  defp parse_retry(false), do: :never

  defp parse_retry(value) when is_binary(value) do
    Enum.find([:always, :never, :idempotent], &(Atom.to_string(&1) == value))
  end

  defp parse_retry(_), do: nil

  defp parse_mark_on(list) when is_list(list) do
    parsed =
      Enum.map(list, fn
        atom when atom in @classifications -> atom
        text when is_binary(text) -> Enum.find(@classifications, &(Atom.to_string(&1) == text))
        _ -> nil
      end)

    if Enum.all?(parsed), do: parsed
  end

  defp parse_mark_on(_), do: nil

  defp bool_error(value, _key) when is_boolean(value), do: []
  defp bool_error(value, key), do: [error(key, value, "a boolean")]

  defp int_error(value, _key) when is_integer(value) and value >= 0, do: []
  defp int_error(value, key), do: [error(key, value, "a non-negative integer")]

  defp codes_error(codes) when is_list(codes) do
    if Enum.all?(codes, &is_integer/1),
      do: [],
      else: [error(:taint_on_exit_codes, codes, "a list of integers")]
  end

  defp codes_error(codes), do: [error(:taint_on_exit_codes, codes, "a list of integers")]

  defp error(key, value, expected),
    do: "invalid crash_barrier.#{key}: #{inspect(value)} (expected #{expected})"
end
