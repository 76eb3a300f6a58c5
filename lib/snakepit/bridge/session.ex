defmodule Snakepit.Bridge.Session do
  @moduledoc """
  A caller session as kept by `Snakepit.Bridge.SessionStore`.

  Times (`created_at`, `last_accessed`) are monotonic seconds; `ttl` is in seconds. A session
  expires when `last_accessed + ttl < now`.
  """

  @enforce_keys [:id, :created_at, :last_accessed, :ttl]
  defstruct [
    :id,
    :created_at,
    :last_accessed,
    :ttl,
    last_worker_id: nil,
    programs: %{},
    metadata: %{},
    stats: %{program_count: 0}
  ]

  @type t :: %__MODULE__{
          id: String.t(),
          created_at: integer(),
          last_accessed: integer(),
          ttl: pos_integer(),
          last_worker_id: String.t() | nil,
          programs: map(),
          metadata: map(),
          stats: map()
        }

  @doc "A new session at monotonic second `now`."
  @spec new(String.t(), integer(), keyword()) :: t()
  def new(id, now, opts) do
    %__MODULE__{
      id: id,
      created_at: now,
      last_accessed: now,
      ttl: Keyword.fetch!(opts, :ttl),
      last_worker_id: Keyword.get(opts, :last_worker_id),
      programs: Keyword.get(opts, :programs, %{}),
      metadata: Keyword.get(opts, :metadata, %{})
    }
  end

  @doc "Whether the session is expired at monotonic second `now`."
  @spec expired?(t(), integer()) :: boolean()
  def expired?(%__MODULE__{last_accessed: at, ttl: ttl}, now), do: at + ttl < now
end
