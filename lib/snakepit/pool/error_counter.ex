defmodule Snakepit.Pool.ErrorCounter do
  @moduledoc false
  # The `errors` statistic of a pool: requests (unary or streaming) that returned
  # `{:error, _}` to their caller after the pool was found (upstream never incremented it).
  #
  # The counter is a `:counters` ref created with the pool's normalized config
  # (`Snakepit.Config.Pool`), so it lives as long as the application run and survives a
  # restart of the pool process. Callers bump it from their own process: no message is sent.

  @doc false
  @spec new() :: :counters.counters_ref()
  def new, do: :counters.new(1, [:write_concurrency])

  @doc false
  # Counts `result` when it is an error; returns it unchanged.
  @spec record(result, map()) :: result when result: term()
  def record({:error, _} = result, %{error_counter: ref}) when ref != nil do
    :counters.add(ref, 1, 1)
    result
  end

  def record(result, _config), do: result

  @doc false
  @spec count(map()) :: non_neg_integer()
  def count(%{error_counter: ref}) when ref != nil, do: :counters.get(ref, 1)
  def count(_config), do: 0
end
