defmodule Snakepit.ConfigStartTest do
  # Invalid configurations stop the application at start, with a message naming the key.
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

  @cases [
    {"unknown affinity", [pools: [%{name: :p, affinity: "sticky"}]],
     ~s(invalid :affinity for pool :p: "sticky")},
    {"unknown global affinity", [affinity: :sometimes, pool_size: 1],
     "invalid :affinity: :sometimes"},
    {"pool_size 0 (legacy)", [pool_config: %{pool_size: 0}],
     "invalid :pool_size for pool :default: 0"},
    {"negative request timeout", [pool_request_timeout: -1, pool_size: 1],
     "invalid :pool_request_timeout: -1"},
    {"negative streaming timeout", [pool_streaming_timeout: -10, pool_size: 1],
     "invalid :pool_streaming_timeout: -10"},
    {"negative queue timeout", [pool_queue_timeout: -5, pool_size: 1],
     "invalid :pool_queue_timeout: -5"},
    {"negative abandon grace", [pools: [%{name: :p, pool_size: 1, abandon_grace_ms: -1}]],
     "invalid :abandon_grace_ms for pool :p: -1"},
    {"duplicate pool names", [pools: [%{name: :a, pool_size: 1}, %{name: :a, pool_size: 1}]],
     "duplicate pool names: [:a]"}
  ]

  for {name, env, message} <- @cases do
    test "#{name} fails the start naming the key" do
      env = [{:pooling_enabled, true} | unquote(Macro.escape(env))]
      Enum.each(env, fn {k, v} -> Application.put_env(:snakepit, k, v) end)

      assert {:error, {:snakepit, reason}} = Application.ensure_all_started(:snakepit)
      assert {{:invalid_config, text}, {Snakepit.Application, :start, _}} = reason
      assert text =~ unquote(message)
      refute Process.whereis(Snakepit.Supervisor)
      assert Snakepit.Worker.os_pids() == []
    end
  end
end
