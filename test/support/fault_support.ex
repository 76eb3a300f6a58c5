defmodule Snakepit.FaultSupport do
  @moduledoc false
  # Helpers of the fault-injection tests (test/integration/fault_*_test.exs, chaos_test.exs).

  import ExUnit.Assertions
  import ExUnit.Callbacks, only: [on_exit: 1]

  alias Snakepit.Native

  @fixtures Path.expand("../fixtures/python", __DIR__)

  @doc "A pool map running `snakepit_test_adapters.FaultAdapter`, merged with `overrides`."
  def fault_pool(name, overrides \\ %{}) do
    Map.merge(
      %{
        name: name,
        pool_size: 2,
        adapter_args: ["--adapter", "snakepit_test_adapters.FaultAdapter"],
        adapter_env: [{"PYTHONPATH", @fixtures}]
      },
      overrides
    )
  end

  @doc "Runs `fun`, returns `{elapsed_ms, result}`."
  def timed(fun) do
    started = System.monotonic_time(:millisecond)
    result = fun.()
    {System.monotonic_time(:millisecond) - started, result}
  end

  @doc "The NIF resource of a running pool."
  def resource(pool) do
    {:ok, {resource, _config}} = Snakepit.Pool.lookup(pool)
    resource
  end

  @doc "The scheduler's view of the workers of `pool`."
  def nif_workers(pool), do: Native.pool_workers(resource(pool))

  @doc "The NIF statistics of `pool`."
  def nif_stats(pool), do: Native.pool_stats(resource(pool))

  @doc "OS pid of the Python process of a worker id."
  def python_pid(worker_id), do: Snakepit.Worker.os_pid(worker_id)

  @doc """
  Forwards the telemetry `events` to the test process as `{:telemetry, event, measurements,
  metadata}` until the test ends.
  """
  def capture_telemetry(events) do
    test = self()
    id = {__MODULE__, make_ref()}

    Snakepit.Telemetry.attach_many(
      id,
      events,
      fn event, measurements, meta, _ -> send(test, {:telemetry, event, measurements, meta}) end,
      nil
    )

    on_exit(fn -> Snakepit.Telemetry.detach(id) end)
  end

  @doc """
  Waits until `pool` has `size` ready workers, none busy or tainted, an empty queue, no request
  in flight and no monitored caller; fails with the last statistics otherwise.
  """
  def assert_pool_idle(pool, size, timeout \\ 15_000) do
    idle =
      Snakepit.TestSupport.eventually(
        fn ->
          stats = nif_stats(pool)

          idle? =
            stats.workers == size and stats.available == size and stats.busy == 0 and
              stats.queued == 0 and stats.in_flight == 0 and stats.monitored_callers == 0 and
              Map.get(stats, :awaiting_reply, 0) == 0

          idle? && stats
        end,
        timeout
      )

    assert idle, "pool #{inspect(pool)} not idle: #{inspect(nif_stats(pool))}"
    idle
  end

  @doc "A fresh temporary directory, removed when the test ends."
  def tmp_dir!(prefix) do
    dir = Path.join(System.tmp_dir!(), "#{prefix}-#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf(dir) end)
    dir
  end
end
