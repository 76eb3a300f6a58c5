defmodule Snakepit.TestSupport do
  @moduledoc false
  # Starts the :snakepit application with real pools for integration tests, and restores the
  # previous environment afterwards.

  import ExUnit.Callbacks, only: [on_exit: 1]

  @root Path.expand("../..", __DIR__)

  @doc "The venv interpreter (SNAKEPIT_PYTHON or <project>/.venv/bin/python3); raises if missing."
  def python! do
    path =
      case System.get_env("SNAKEPIT_PYTHON") do
        value when value in [nil, ""] -> Path.join(@root, ".venv/bin/python3")
        value -> value
      end

    unless File.exists?(path) do
      raise """
      Python interpreter for the integration tests not found at #{path}.
      Create the venv first:

          python3 -m venv .venv && .venv/bin/pip install -r priv/python/requirements.txt

      or point SNAKEPIT_PYTHON at an interpreter with grpcio installed.
      """
    end

    path
  end

  @doc "adapter_env entry that puts the test fixture adapters on PYTHONPATH."
  def fixture_env, do: [{"PYTHONPATH", Path.join(@root, "test/fixtures/python")}]

  @doc "adapter_args for a fixture adapter class."
  def fixture_adapter(class), do: ["--adapter", "snakepit_test_adapters.#{class}"]

  @doc """
  (Re)starts :snakepit with `env` (merged over `pooling_enabled: true`) and waits for the pools.
  Stops it again and restores the previous environment when the test (module) exits.
  """
  def start_snakepit!(env, await_timeout \\ 60_000) do
    :ok = try_start_snakepit(env, await_timeout)
  end

  @doc "Like start_snakepit!/2 but returns the start/await result instead of asserting it."
  def try_start_snakepit(env, await_timeout \\ 60_000) do
    configure_snakepit(env)

    case Application.ensure_all_started(:snakepit) do
      {:ok, _} -> Snakepit.Pool.await_ready(Snakepit.Pool, await_timeout)
      error -> error
    end
  end

  @doc """
  Stops :snakepit and sets `env` (merged over `pooling_enabled: true`) without starting it
  again; the previous environment is restored (and the application restarted) when the test
  (module) exits.
  """
  def configure_snakepit(env) do
    previous = Application.get_all_env(:snakepit)
    Application.stop(:snakepit)
    put_env(Keyword.merge([pooling_enabled: true], env))

    on_exit(fn ->
      Application.stop(:snakepit)

      for {key, _} <- Application.get_all_env(:snakepit),
          do: Application.delete_env(:snakepit, key)

      put_env(previous)
      {:ok, _} = Application.ensure_all_started(:snakepit)
    end)
  end

  defp put_env(env), do: Enum.each(env, fn {k, v} -> Application.put_env(:snakepit, k, v) end)

  @doc "Whether an OS process is alive (not a zombie)."
  def os_alive?(pid), do: Snakepit.OsProcess.alive?(pid)

  @doc "OS pids whose command line runs the snakepit worker module with this runtime's sockets."
  def worker_os_pids do
    for entry <- File.ls!("/proc"),
        Regex.match?(~r/\A\d+\z/, entry),
        {:ok, cmdline} <- [File.read("/proc/#{entry}/cmdline")],
        String.contains?(cmdline, "snakepit_bridge.server"),
        String.contains?(cmdline, "snakepit-#{System.pid()}-"),
        os_alive?(String.to_integer(entry)),
        do: String.to_integer(entry)
  end

  @doc """
  Waits until `count` workers (all pools) are ready; `start_snakepit!/2` only waits for one per
  pool.
  """
  def await_workers!(count, timeout \\ 30_000) do
    unless eventually(fn -> length(Snakepit.list_workers()) == count end, timeout) do
      raise "expected #{count} ready workers, have #{inspect(Snakepit.list_workers())}"
    end

    :ok
  end

  @doc "Polls `fun` until it returns truthy or `timeout` ms pass; returns the last value."
  def eventually(fun, timeout \\ 5_000) do
    deadline = System.monotonic_time(:millisecond) + timeout
    do_eventually(fun, deadline)
  end

  defp do_eventually(fun, deadline) do
    case fun.() do
      result when result not in [nil, false] ->
        result

      result ->
        if System.monotonic_time(:millisecond) >= deadline do
          result
        else
          Process.sleep(25)
          do_eventually(fun, deadline)
        end
    end
  end
end
