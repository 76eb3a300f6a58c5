defmodule Snakepit.Defaults do
  @moduledoc """
  Default values of the configuration keys, including the timeout profiles.

  `timeout_profile` (default `:balanced`) derives the request, streaming and queue timeouts;
  an explicit key (`:pool_request_timeout`, `:pool_streaming_timeout`, `:pool_queue_timeout`,
  `:checkout_timeout`) always wins.

  | Profile | request (`default_timeout`) | stream (`stream_timeout`) | queue (`queue_timeout`) |
  |---|---|---|---|
  | `:balanced` (default), `:production` | 300 000 | 900 000 | 10 000 |
  | `:production_strict` | 60 000 | 300 000 | 5 000 |
  | `:development`, `:ml_inference` | 900 000 | 3 600 000 | 60 000 |
  | `:batch` | 3 600 000 | `:infinity` | 300 000 |

  The functions without arguments read the application environment at call time.

      iex> Snakepit.Defaults.timeout_profile(:production_strict)
      %{default_timeout: 60_000, stream_timeout: 300_000, queue_timeout: 5_000}
  """

  @profiles %{
    balanced: %{default_timeout: 300_000, stream_timeout: 900_000, queue_timeout: 10_000},
    production: %{default_timeout: 300_000, stream_timeout: 900_000, queue_timeout: 10_000},
    production_strict: %{default_timeout: 60_000, stream_timeout: 300_000, queue_timeout: 5_000},
    development: %{default_timeout: 900_000, stream_timeout: 3_600_000, queue_timeout: 60_000},
    ml_inference: %{default_timeout: 900_000, stream_timeout: 3_600_000, queue_timeout: 60_000},
    batch: %{default_timeout: 3_600_000, stream_timeout: :infinity, queue_timeout: 300_000}
  }

  @doc "Names of the timeout profiles."
  @spec timeout_profiles() :: [atom()]
  def timeout_profiles, do: Map.keys(@profiles)

  @doc "The timeouts of a profile, or nil for an unknown name."
  @spec timeout_profile(atom()) :: map() | nil
  def timeout_profile(name), do: Map.get(@profiles, name)

  @doc "Default `:timeout` of `Snakepit.execute/3` (ms)."
  @spec pool_request_timeout() :: timeout()
  def pool_request_timeout, do: env(:pool_request_timeout, :default_timeout)

  @doc "Default `:timeout` of `Snakepit.execute_stream/4` (ms)."
  @spec pool_streaming_timeout() :: timeout()
  def pool_streaming_timeout, do: env(:pool_streaming_timeout, :stream_timeout)

  @doc "How long a request may wait in a pool queue (ms)."
  @spec pool_queue_timeout() :: non_neg_integer()
  def pool_queue_timeout, do: env(:pool_queue_timeout, :queue_timeout)

  @doc "Upstream's checkout timeout (ms); equal to the queue timeout by default."
  @spec checkout_timeout() :: non_neg_integer()
  def checkout_timeout, do: env(:checkout_timeout, :queue_timeout)

  @doc "Default number of workers per pool: `System.schedulers_online() * 2`."
  @spec default_pool_size() :: pos_integer()
  def default_pool_size,
    do: Application.get_env(:snakepit, :default_pool_size, System.schedulers_online() * 2)

  @doc "The default Python adapter arguments."
  @spec adapter_args() :: [String.t()]
  def adapter_args, do: ["--adapter", "snakepit_bridge.adapters.showcase.ShowcaseAdapter"]

  @doc "The default Python adapter class of the thread worker profile."
  @spec threaded_adapter() :: String.t()
  def threaded_adapter, do: "snakepit_bridge.adapters.threaded_showcase.ThreadedShowcaseAdapter"

  defp env(key, profile_key) do
    case Application.fetch_env(:snakepit, key) do
      {:ok, value} ->
        value

      :error ->
        profile = Application.get_env(:snakepit, :timeout_profile, :balanced)
        Map.fetch!(timeout_profile(profile) || @profiles.balanced, profile_key)
    end
  end
end
