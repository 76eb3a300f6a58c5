defmodule Snakepit.Bridge.SessionStoreTest do
  use ExUnit.Case, async: true

  alias Snakepit.Bridge.{Session, SessionStore}

  setup do
    name = :"session_store_#{System.unique_integer([:positive])}"
    store = start_supervised!({SessionStore, name: name, max_sessions: 3, ttl: 3600})
    %{store: store}
  end

  test "create_session is idempotent", %{store: store} do
    assert {:ok, %Session{id: "s"} = first} =
             SessionStore.create_session(store, "s", metadata: %{a: 1})

    assert {:ok, ^first} = SessionStore.create_session(store, "s", [])
    assert SessionStore.list_sessions(store) == ["s"]
    assert SessionStore.get_stats(store).sessions_created == 1
  end

  test "invalid id and quota", %{store: store} do
    assert {:error, :invalid_id} = SessionStore.create_session(store, "", [])
    for id <- ~w(a b c), do: assert({:ok, _} = SessionStore.create_session(store, id, []))
    assert {:error, :session_quota_exceeded} = SessionStore.create_session(store, "d", [])
    assert {:error, :session_quota_exceeded} = SessionStore.store_worker_session(store, "d", "w1")
  end

  test "get_session touches; unknown is :not_found", %{store: store} do
    assert {:error, :not_found} = SessionStore.get_session(store, "nope")
    {:ok, _} = SessionStore.create_session(store, "s", [])
    assert {:ok, %Session{id: "s", last_worker_id: nil}} = SessionStore.get_session(store, "s")
    assert SessionStore.session_exists?(store, "s")
  end

  test "store_worker_session upserts and validates new sessions", %{store: store} do
    assert {:error, :invalid_last_worker_id} = SessionStore.store_worker_session(store, "s", 123)
    assert :ok = SessionStore.store_worker_session(store, "s", "default_worker_1_1")

    assert {:ok, %Session{last_worker_id: "default_worker_1_1"}} =
             SessionStore.get_session(store, "s")

    assert :ok = SessionStore.store_worker_session(store, "s", "default_worker_2_2")

    assert {:ok, %Session{last_worker_id: "default_worker_2_2"}} =
             SessionStore.get_session(store, "s")
  end

  test "update_session applies the function and survives failures", %{store: store} do
    {:ok, _} = SessionStore.create_session(store, "s", [])

    assert {:ok, %Session{metadata: %{x: 1}}} =
             SessionStore.update_session(store, "s", &%{&1 | metadata: %{x: 1}})

    assert {:error, {:update_failed, %RuntimeError{}}} =
             SessionStore.update_session(store, "s", fn _ -> raise "boom" end)

    assert {:error, {:update_failed, {:throw, :x}}} =
             SessionStore.update_session(store, "s", fn _ -> throw(:x) end)

    assert {:error, :not_found} = SessionStore.update_session(store, "nope", & &1)
    assert {:ok, %Session{metadata: %{x: 1}}} = SessionStore.get_session(store, "s")
  end

  test "delete_session always returns :ok", %{store: store} do
    {:ok, _} = SessionStore.create_session(store, "s", [])
    assert :ok = SessionStore.delete_session(store, "s")
    assert :ok = SessionStore.delete_session(store, "s")
    refute SessionStore.session_exists?(store, "s")
    assert SessionStore.get_stats(store).sessions_deleted == 1
  end

  test "expired sessions are swept", %{store: store} do
    {:ok, _} = SessionStore.create_session(store, "short", ttl: 1)
    {:ok, _} = SessionStore.create_session(store, "long", [])
    Process.sleep(2_100)
    refute SessionStore.session_exists?(store, "short")
    assert SessionStore.cleanup_expired_sessions(store) == 1
    assert SessionStore.list_sessions(store) == ["long"]
    stats = SessionStore.get_stats(store)
    assert stats.sessions_expired == 1
    assert stats.current_sessions == 1
  end
end
