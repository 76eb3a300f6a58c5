defmodule Snakepit.Integration.AdapterImportTest do
  # Issue #4: `--adapter module.Class` that cannot be imported (missing module, missing class,
  # module raising at import). The failed start reaches Elixir with the Python traceback, the
  # pool process survives (degraded, retrying), and the other pools keep serving.
  use ExUnit.Case, async: false

  import Snakepit.TestSupport

  alias Snakepit.Error

  @moduletag :capture_log

  defp pool(name, adapter) do
    %{
      name: name,
      pool_size: 1,
      adapter_args: ["--adapter", adapter],
      adapter_env: fixture_env()
    }
  end

  @cases [
    {:missing_module, "no_such_module_xyz.Adapter", "ModuleNotFoundError",
     "No module named 'no_such_module_xyz'"},
    {:missing_class, "snakepit_test_adapters.NoSuchAdapter", "AttributeError",
     "has no attribute 'NoSuchAdapter'"},
    {:raising_module, "snakepit_broken_adapter.BrokenImportAdapter", "ImportError",
     "broken on purpose"}
  ]

  for {name, adapter, type, text} <- @cases do
    test "#{name}: the start error carries the #{type} and its traceback; other pools serve" do
      name = unquote(name)
      adapter = unquote(adapter)
      type = unquote(type)
      text = unquote(text)

      ok_pool = pool(:ok, "snakepit_test_adapters.ContractAdapter")
      result = try_start_snakepit([pools: [ok_pool, pool(name, adapter)]], 30_000)

      assert {:error, %Error{category: :pool, message: "Pool failed to start workers"} = error} =
               result

      assert error.details.pool == name
      assert error.python_traceback =~ "Traceback (most recent call last):"
      assert error.python_traceback =~ "#{type}: "
      assert error.python_traceback =~ text

      worker_error = error.details.worker_error
      assert worker_error.message =~ "Worker failed to start: #{type}: "
      assert worker_error.message =~ adapter
      assert worker_error.details.exception_type == type
      assert worker_error.details.exit_status == 3

      # The failing pool is alive and answers at once; the good pool serves.
      pool_pid = GenServer.whereis(Snakepit.Pool.via(name))
      assert is_pid(pool_pid)

      assert {:error, %Error{category: :pool, details: %{reason: :pool_not_initialized}}} =
               Snakepit.execute("greet", %{name: "x"}, pool_name: name)

      assert :ok = Snakepit.Pool.await_ready(:ok, 30_000)
      assert {:ok, "Hello, x!"} = Snakepit.execute("greet", %{name: "x"}, pool_name: :ok)

      # Still alive after the next start attempt (500 ms backoff).
      Process.sleep(800)
      assert GenServer.whereis(Snakepit.Pool.via(name)) == pool_pid
      assert Process.alive?(Process.whereis(Snakepit.Supervisor))
    end
  end
end
