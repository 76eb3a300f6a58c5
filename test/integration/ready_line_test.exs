defmodule Snakepit.Integration.ReadyLineTest do
  # Readiness comes from the worker server, after it bound its socket. An adapter that prints
  # the same line while it is imported must not get its worker registered before it serves.
  use ExUnit.Case, async: false

  import Snakepit.TestSupport

  @moduletag :capture_log

  test "a fake SNAKEPIT_READY printed at adapter import does not register the worker early" do
    start_one_worker!(:noisy, "snakepit_noisy_adapter.NoisyAdapter")

    # The first call right after readiness must reach a serving worker.
    assert {:ok, pid} = Snakepit.execute("pid", %{}, pool_name: :noisy, timeout: 10_000)
    assert is_integer(pid) and pid != String.to_integer(System.pid())
  end

  test "a line left unfinished by the adapter's import does not hide the ready line" do
    start_one_worker!(:progress, "snakepit_progress_adapter.ProgressAdapter")
    assert {:ok, pid} = Snakepit.execute("pid", %{}, pool_name: :progress, timeout: 10_000)
    assert is_integer(pid)
  end

  defp start_one_worker!(name, adapter) do
    pool = %{
      name: name,
      pool_size: 1,
      adapter_args: ["--adapter", adapter],
      adapter_env: fixture_env()
    }

    assert :ok = try_start_snakepit([pools: [pool]], 30_000)
  end
end
