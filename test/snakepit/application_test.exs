defmodule Snakepit.ApplicationTest do
  # Restarts the application: must not run concurrently with other tests.
  use ExUnit.Case, async: false

  setup do
    previous = Application.get_all_env(:snakepit)
    Application.stop(:snakepit)

    on_exit(fn ->
      Application.stop(:snakepit)

      for {key, _} <- Application.get_all_env(:snakepit),
          do: Application.delete_env(:snakepit, key)

      Enum.each(previous, fn {k, v} -> Application.put_env(:snakepit, k, v) end)
      {:ok, _} = Application.ensure_all_started(:snakepit)
    end)
  end

  test "an invalid configuration stops the application from starting, naming the key" do
    Application.put_env(:snakepit, :pooling_enabled, true)
    Application.put_env(:snakepit, :pools, [%{name: :bad, pool_size: 0, affinity: :sticky}])

    assert {:error, {:snakepit, reason}} = Application.ensure_all_started(:snakepit)
    text = inspect(reason)
    assert text =~ "invalid_config"
    assert text =~ ":pool_size for pool :bad"
    assert text =~ ":affinity for pool :bad"
    refute Process.whereis(Snakepit.Supervisor)
  end

  test "a missing python executable stops the application from starting" do
    Application.put_env(:snakepit, :pooling_enabled, true)
    Application.put_env(:snakepit, :pools, [%{name: :p, pool_size: 1}])
    Application.put_env(:snakepit, :python_executable, "/nonexistent/python3")

    assert {:error, {:snakepit, reason}} = Application.ensure_all_started(:snakepit)
    assert inspect(reason) =~ "invalid_python_executable"
  end

  test "with pooling disabled only the registry and the session store run" do
    Application.put_env(:snakepit, :pooling_enabled, false)
    {:ok, _} = Application.ensure_all_started(:snakepit)

    assert Process.whereis(Snakepit.Bridge.SessionStore)
    assert Snakepit.Pool.pool_names() == []

    assert {:error, %Snakepit.Error{category: :pool, details: %{reason: :pool_not_found}}} =
             Snakepit.execute("ping", %{})
  end
end
