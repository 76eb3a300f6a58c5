defmodule Snakepit.Pool.Supervisor do
  @moduledoc false
  # One pool: the worker DynamicSupervisor, then the Snakepit.Pool owner process.
  #
  # :one_for_all because the workers are registered in the Pool's NIF resource: if the Pool
  # restarts (new resource), its workers must be restarted too. Children stop in reverse order,
  # so on shutdown the Pool closes the scheduler (queued callers are answered) and waits for
  # running calls to finish (its child spec's shutdown covers that grace) before the workers'
  # Python processes are stopped.

  use Supervisor

  def start_link(pool_config), do: Supervisor.start_link(__MODULE__, pool_config)

  def child_spec(pool_config) do
    %{
      id: {__MODULE__, pool_config.name},
      start: {__MODULE__, :start_link, [pool_config]},
      type: :supervisor
    }
  end

  @impl true
  def init(pool_config) do
    children = [
      {DynamicSupervisor,
       name: Snakepit.Pool.worker_supervisor(pool_config.name), strategy: :one_for_one},
      {Snakepit.Pool, pool_config}
    ]

    Supervisor.init(children, strategy: :one_for_all, max_restarts: 3, max_seconds: 5)
  end
end
