defmodule Snakepit.Integration.SessionAndProfileTest do
  # Sessions against the scheduler's affinity table, the thread worker profile, telemetry of
  # worker lifecycle, and run_as_script.
  use ExUnit.Case, async: false

  import Snakepit.TestSupport

  alias Snakepit.Bridge.SessionStore

  setup_all do
    test_pid = self()
    id = {__MODULE__, :worker_events}

    Snakepit.Telemetry.attach_many(
      id,
      [
        [:snakepit, :pool, :worker_ready],
        [:snakepit, :pool, :worker, :spawned],
        [:snakepit, :pool, :worker, :terminated]
      ],
      fn event, measurements, metadata, _ ->
        send(test_pid, {:telemetry, event, measurements, metadata})
      end,
      nil
    )

    on_exit(fn -> Snakepit.Telemetry.detach(id) end)

    start_snakepit!(
      pools: [
        %{
          name: :contract,
          pool_size: 2,
          adapter_args: fixture_adapter("ContractAdapter"),
          adapter_env: fixture_env()
        },
        %{
          name: :threaded,
          pool_size: 1,
          worker_profile: :thread,
          threads_per_worker: 3,
          adapter_args: fixture_adapter("ContractAdapter"),
          adapter_env: fixture_env()
        }
      ]
    )

    events = collect_telemetry()
    %{startup_events: events}
  end

  test "worker lifecycle telemetry", %{startup_events: events} do
    ready = for {[:snakepit, :pool, :worker_ready], _, meta} <- events, do: meta
    spawned = for {[:snakepit, :pool, :worker, :spawned], m, meta} <- events, do: {m, meta}

    assert length(ready) == 3
    assert Enum.sort(Enum.uniq(Enum.map(ready, & &1.pool_name))) == [:contract, :threaded]
    assert length(spawned) == 3

    for {measurements, meta} <- spawned do
      assert is_integer(measurements.duration)
      assert is_integer(meta.python_pid)
      assert meta.worker_id in Snakepit.list_workers()
    end
  end

  test "get_session reports the worker the scheduler pinned the session to" do
    session = "s-#{System.unique_integer([:positive])}"
    assert {:error, :not_found} = SessionStore.get_session(session)

    assert {:ok, _} =
             Snakepit.execute_in_session(session, "store_object", %{key: "a", value: 1},
               pool_name: :contract
             )

    assert {:ok, %{last_worker_id: worker_id}} = SessionStore.get_session(session)
    assert worker_id in Snakepit.Pool.list_workers(Snakepit.Pool, :contract)

    assert :ok = SessionStore.delete_session(session)
    {:ok, {resource, _}} = Snakepit.Pool.lookup(:contract)
    assert Snakepit.Native.pool_session_worker(resource, session) == nil
  end

  test "thread profile: one worker serves threads_per_worker calls at once" do
    assert [%{capacity: 3}] =
             Snakepit.Native.pool_workers(elem(elem(Snakepit.Pool.lookup(:threaded), 1), 0))

    started = System.monotonic_time(:millisecond)

    results =
      1..3
      |> Enum.map(fn _ ->
        Task.async(fn -> Snakepit.execute("sleep_ms", %{ms: 600}, pool_name: :threaded) end)
      end)
      |> Task.await_many(10_000)

    elapsed = System.monotonic_time(:millisecond) - started
    assert Enum.all?(results, &match?({:ok, %{"slept_ms" => 600}}, &1))
    assert elapsed < 1_500, "3 calls on a 3-thread worker took #{elapsed} ms"
  end

  test "run_as_script runs the function when the pools are ready" do
    assert {:ok, "Hello, script!"} =
             Snakepit.run_as_script(
               fn -> Snakepit.execute("greet", %{name: "script"}, pool_name: :contract) end,
               await_pool: true,
               stop_mode: :never
             )

    assert Process.whereis(Snakepit.Supervisor)
  end

  defp collect_telemetry(acc \\ []) do
    receive do
      {:telemetry, event, measurements, metadata} ->
        collect_telemetry([{event, measurements, metadata} | acc])
    after
      100 -> Enum.reverse(acc)
    end
  end
end
