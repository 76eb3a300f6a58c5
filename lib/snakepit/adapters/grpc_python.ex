defmodule Snakepit.Adapters.GRPCPython do
  @moduledoc """
  The Elixir adapter module of upstream Snakepit's Python bridge, kept so existing
  `adapter_module: Snakepit.Adapters.GRPCPython` configurations work unchanged.

  Workers always run `python -m snakepit_bridge.server`; this module only answers the adapter
  questions upstream callers may ask.
  """

  @doc "Streaming is supported."
  @spec uses_grpc?() :: true
  def uses_grpc?, do: true

  @doc "The Python interpreter (see `Snakepit.PythonExecutable`)."
  @spec executable_path() :: String.t() | nil
  def executable_path do
    case Snakepit.PythonExecutable.resolve() do
      {:ok, path} -> path
      {:error, _} -> nil
    end
  end

  @doc "The worker entry point: the `snakepit_bridge.server` module's file."
  @spec script_path() :: String.t()
  def script_path,
    do: Path.join(Snakepit.Worker.Launch.priv_python(), "snakepit_bridge/server.py")

  @doc "Default adapter arguments (legacy `pool_config.adapter_args` when set)."
  @spec script_args() :: [String.t()]
  def script_args do
    pool_config = Map.new(Application.get_env(:snakepit, :pool_config, %{}))
    Map.get(pool_config, :adapter_args) || Snakepit.Defaults.adapter_args()
  end

  @doc "Workers listen on a Unix socket; no TCP port is requested."
  @spec get_port() :: 0
  def get_port, do: 0
end
