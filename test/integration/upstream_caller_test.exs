defmodule Snakepit.Integration.UpstreamCallerTest do
  # A caller written against upstream Snakepit v0.13's README and guides only: legacy
  # single-pool configuration set with Application.put_env, the documented calls, and the
  # documented result shapes (contract §7.5 / §9). Deliberate differences from upstream are
  # the fixed quirks: integers stay integers (`add` -> 4, not 4.0) and Python sees the caller's
  # session id, so per-session state in a worker is found again.
  use ExUnit.Case, async: false

  alias Snakepit.Bridge.{Session, SessionStore}

  setup_all do
    previous = Application.get_all_env(:snakepit)
    Application.stop(:snakepit)

    # As in upstream's README ("Quick start") plus keys of its guides this project ignores.
    Application.put_env(:snakepit, :pooling_enabled, true)
    Application.put_env(:snakepit, :adapter_module, Snakepit.Adapters.GRPCPython)
    Application.put_env(:snakepit, :pool_config, %{pool_size: 2})
    Application.put_env(:snakepit, :grpc_port, 50_051)
    Application.put_env(:snakepit, :log_level, :warning)

    on_exit(fn ->
      Application.stop(:snakepit)

      for {key, _} <- Application.get_all_env(:snakepit),
          do: Application.delete_env(:snakepit, key)

      Enum.each(previous, fn {k, v} -> Application.put_env(:snakepit, k, v) end)
      {:ok, _} = Application.ensure_all_started(:snakepit)
    end)

    {:ok, _} = Application.ensure_all_started(:snakepit)
    :ok = Snakepit.Pool.await_ready(Snakepit.Pool, 60_000)
    :ok
  end

  test "execute/3 with the showcase tools" do
    assert {:ok, %{"message" => "pong", "timestamp" => timestamp}} = Snakepit.execute("ping", %{})
    assert is_binary(timestamp)

    assert {:ok, %{"echoed" => %{"message" => "hi"}}} = Snakepit.execute("echo", %{message: "hi"})

    assert {:ok, 4} = Snakepit.execute("add", %{a: 2, b: 2})
    assert {:ok, 4.5} = Snakepit.execute("add", %{a: 2, b: 2.5}, timeout: 5_000)

    assert {:error, %Snakepit.Error{category: :worker, message: "Request failed"} = error} =
             Snakepit.execute("nonexistent_tool", %{})

    assert error.details.exception_type == "AttributeError"

    assert {:error, %Snakepit.Error{category: :pool, details: %{reason: :pool_not_found}}} =
             Snakepit.execute("ping", %{}, pool_name: :missing)
  end

  test "execute_in_session/4 keeps per-session state on the session's worker" do
    session_id = "upstream-user-#{System.unique_integer([:positive])}"
    {:ok, %Session{id: ^session_id}} = SessionStore.create_session(session_id)

    assert {:ok, %{"counter" => 5}} =
             Snakepit.execute_in_session(session_id, "set_counter", %{value: 5})

    for expected <- 6..10 do
      assert {:ok, %{"counter" => ^expected}} =
               Snakepit.execute_in_session(session_id, "increment_counter", %{})
    end

    assert {:ok, %Session{last_worker_id: worker_id}} = SessionStore.get_session(session_id)
    assert worker_id in Snakepit.list_workers()
    assert SessionStore.session_exists?(session_id)
    assert session_id in SessionStore.list_sessions()

    assert :ok = SessionStore.delete_session(session_id)
    assert {:error, :not_found} = SessionStore.get_session(session_id)
    assert %{sessions_created: _, current_sessions: _} = SessionStore.get_stats()
  end

  test "execute_stream/4 and execute_in_session_stream/5" do
    parent = self()

    assert :ok =
             Snakepit.execute_stream("stream_progress", %{steps: 3, delay_ms: 1}, fn chunk ->
               send(parent, {:chunk, chunk})
             end)

    chunks = for {:chunk, chunk} <- drain(), do: chunk
    assert Enum.map(chunks, & &1["step"]) == [1, 2, 3]
    assert List.last(chunks)["is_final"] == true

    assert :ok =
             Snakepit.execute_in_session_stream(
               "upstream-stream",
               "stream_fibonacci",
               %{count: 5},
               fn chunk -> send(parent, {:chunk, chunk}) end,
               timeout: 10_000
             )

    values = for {:chunk, %{"value" => value}} <- drain(), do: value
    assert values == [0, 1, 1, 2, 3]

    # Halting early.
    assert :ok =
             Snakepit.execute_stream("stream_progress", %{steps: 50, delay_ms: 1}, fn chunk ->
               if chunk["step"] == 2, do: :halt, else: :ok
             end)
  end

  test "streaming needs an adapter_module whose uses_grpc?/0 is true (upstream's gate)" do
    Application.put_env(:snakepit, :adapter_module, Snakepit.Error)

    on_exit(fn ->
      Application.put_env(:snakepit, :adapter_module, Snakepit.Adapters.GRPCPython)
    end)

    assert {:error,
            %Snakepit.Error{category: :validation, message: "Streaming not supported by adapter"}} =
             Snakepit.execute_stream("stream_progress", %{steps: 1}, fn _ -> :ok end)
  end

  test "introspection" do
    # await_ready/2 returns once one worker is ready; the second follows.
    assert [_, _] = workers = Snakepit.TestSupport.eventually(&two_workers/0, 30_000)
    assert Enum.all?(workers, &is_binary/1)

    stats = Snakepit.get_stats()

    for key <- [:requests, :queued, :errors, :queue_timeouts, :pool_saturated, :busy] do
      assert is_integer(Map.fetch!(stats, key))
    end

    assert %{workers: 2, available: available} = stats
    assert available in 0..2
    assert :ok = Snakepit.Pool.await_ready()
  end

  defp two_workers do
    case Snakepit.list_workers() do
      [_, _] = workers -> workers
      _ -> nil
    end
  end

  defp drain(acc \\ []) do
    receive do
      {:chunk, _} = message -> drain([message | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end
end
