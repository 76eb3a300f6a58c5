defmodule Snakepit.Integration.SessionTtlTest do
  # Session expiry with the application's own SessionStore and scheduler: session_default_ttl
  # drives both the store's sweep and the scheduler's idle affinity TTL.
  use ExUnit.Case, async: false

  import Snakepit.TestSupport

  alias Snakepit.Bridge.SessionStore

  setup_all do
    start_snakepit!(
      session_default_ttl: 1,
      session_cleanup_interval: 200,
      pools: [
        %{
          name: :contract,
          pool_size: 2,
          adapter_args: fixture_adapter("ContractAdapter"),
          adapter_env: fixture_env()
        }
      ]
    )

    await_workers!(2)

    :ok
  end

  test "idle sessions expire from the store and from the scheduler" do
    {:ok, resource} = resource()
    stored = "ttl-stored-#{System.unique_integer([:positive])}"
    pinned = "ttl-pinned-#{System.unique_integer([:positive])}"
    kept = "ttl-kept-#{System.unique_integer([:positive])}"
    expired_before = SessionStore.get_stats().sessions_expired

    {:ok, _} = SessionStore.create_session(stored)
    {:ok, _} = SessionStore.create_session(kept, ttl: 3600)
    {:ok, _} = Snakepit.execute_in_session(pinned, "pid", %{}, pool_name: :contract)
    assert is_binary(Snakepit.Native.pool_session_worker(resource, pinned))

    # Swept by the periodic cleanup (no explicit cleanup call) once last_accessed + 1 s passed.
    assert eventually(fn -> stored not in SessionStore.list_sessions() end, 4_000)
    refute SessionStore.session_exists?(stored)
    assert SessionStore.get_stats().sessions_expired > expired_before
    assert SessionStore.session_exists?(kept)

    # The scheduler forgets the idle pin after the same TTL.
    assert eventually(
             fn -> Snakepit.Native.pool_session_worker(resource, pinned) == nil end,
             4_000
           )

    assert {:error, :not_found} = SessionStore.get_session(pinned)
  end

  test "delete_session drops the scheduler's pin at once" do
    {:ok, resource} = resource()
    session = "ttl-delete-#{System.unique_integer([:positive])}"
    {:ok, _} = Snakepit.execute_in_session(session, "pid", %{}, pool_name: :contract)
    assert {:ok, %{last_worker_id: worker}} = SessionStore.get_session(session)
    assert worker == Snakepit.Native.pool_session_worker(resource, session)

    assert :ok = SessionStore.delete_session(session)
    assert Snakepit.Native.pool_session_worker(resource, session) == nil
    assert {:error, :not_found} = SessionStore.get_session(session)
  end

  test "a session named by an atom, as execute accepts it, is released by that atom" do
    {:ok, resource} = resource()
    session = :"ttl-atom-#{System.unique_integer([:positive])}"
    {:ok, _} = Snakepit.execute_in_session(session, "pid", %{}, pool_name: :contract)
    assert Snakepit.Native.pool_session_worker(resource, Atom.to_string(session)) != nil

    assert :ok = SessionStore.delete_session(session)
    assert Snakepit.Native.pool_session_worker(resource, Atom.to_string(session)) == nil
  end

  test "a strict session whose call outlives the idle TTL keeps its worker" do
    # The TTL here is 1 s: the session is busy, not idle, while its 1.2 s call runs, so the
    # next call must find the object where it was stored (not land on the other worker).
    opts = [pool_name: :contract, affinity: :strict_queue]

    for i <- 1..3 do
      session = "ttl-busy-#{i}-#{System.unique_integer([:positive])}"

      {:ok, %{"pid" => pid}} =
        Snakepit.execute_in_session(session, "store_object", %{key: "k", value: i}, opts)

      assert {:ok, _} = Snakepit.execute_in_session(session, "sleep_ms", %{ms: 1_200}, opts)
      assert {:ok, ^i} = Snakepit.execute_in_session(session, "fetch_object", %{key: "k"}, opts)
      assert {:ok, %{"pid" => ^pid}} = Snakepit.execute_in_session(session, "whoami", %{}, opts)
      :ok = SessionStore.delete_session(session)
    end
  end

  defp resource do
    with {:ok, {resource, _config}} <- Snakepit.Pool.lookup(:contract), do: {:ok, resource}
  end
end
