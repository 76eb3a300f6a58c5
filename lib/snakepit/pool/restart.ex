defmodule Snakepit.Pool.Restart do
  @moduledoc false
  # Restart policy of a pool's worker slots (pure; used by Snakepit.Pool).
  #
  # * A worker that crashed after it was ready is replaced at once the first time; repeated
  #   crashes of the same slot back off exponentially (100 ms doubling, capped at 5 s). A slot
  #   whose worker stayed up for 30 s counts as healthy again.
  # * A worker that failed to start (adapter import error, no ready line, ...) is retried after
  #   500 ms doubling, capped at 10 s, for as long as the pool runs: a broken environment may be
  #   fixed (a mount appears, a package is installed) and the pool then heals by itself, while
  #   the cap bounds the cost of a permanently broken adapter to one Python start per slot per
  #   10 s.

  alias Snakepit.CrashBarrier

  @stable_after_ms 30_000
  @crash_backoff_max_ms 5_000
  @start_backoff_base_ms 500
  @start_backoff_max_ms 10_000

  @typedoc "Carried from a crashed worker to its replacement."
  @type t :: %{
          crashes: non_neg_integer(),
          previous: String.t() | nil,
          crash: crash() | nil
        }

  @type crash :: %{
          worker_id: String.t(),
          reason: term(),
          exit_code: integer() | nil,
          classification: CrashBarrier.classification() | nil,
          taint: boolean()
        }

  @doc false
  @spec fresh() :: t()
  def fresh, do: %{crashes: 0, previous: nil, crash: nil}

  @doc false
  # The crash of a ready worker, classified under the pool's crash barrier.
  @spec crash(CrashBarrier.t(), String.t(), term()) :: crash()
  def crash(barrier, worker_id, reason) do
    code = CrashBarrier.exit_code(reason)

    %{
      worker_id: worker_id,
      reason: reason,
      exit_code: code,
      classification: CrashBarrier.classify(code),
      taint: CrashBarrier.taint?(barrier, reason)
    }
  end

  @doc """
  The context and delay of the replacement of a worker that crashed; `uptime_ms` is how long
  the crashed worker had been ready.

      iex> {ctx, 0} = Snakepit.Pool.Restart.after_crash(Snakepit.Pool.Restart.fresh(), nil, 10)
      iex> {_, delay} = Snakepit.Pool.Restart.after_crash(ctx, nil, 10)
      iex> delay
      100
  """
  @spec after_crash(t(), crash() | nil, non_neg_integer() | nil) :: {t(), non_neg_integer()}
  def after_crash(previous, crash, uptime_ms) do
    stable? = is_integer(uptime_ms) and uptime_ms > @stable_after_ms
    crashes = if stable?, do: 1, else: previous.crashes + 1

    delay =
      if crashes <= 1,
        do: 0,
        else: min(100 * Integer.pow(2, crashes - 2), @crash_backoff_max_ms)

    {%{crashes: crashes, previous: crash && crash.worker_id, crash: crash}, delay}
  end

  @doc """
  Delay before the `n`th consecutive start attempt of a slot that failed to start.

      iex> Enum.map([1, 2, 3, 10], &Snakepit.Pool.Restart.start_retry_delay/1)
      [500, 1000, 2000, 10000]
  """
  @spec start_retry_delay(pos_integer()) :: pos_integer()
  def start_retry_delay(failures) do
    min(@start_backoff_base_ms * Integer.pow(2, min(failures, 16) - 1), @start_backoff_max_ms)
  end
end
