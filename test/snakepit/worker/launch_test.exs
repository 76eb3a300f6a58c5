defmodule Snakepit.Worker.LaunchTest do
  use ExUnit.Case, async: true

  alias Snakepit.Worker.Launch

  defp config(overrides \\ %{}) do
    {:ok, config} = Snakepit.Config.load(pools: [Map.merge(%{name: :p, pool_size: 1}, overrides)])
    config.pools |> hd() |> Map.put(:python, "/usr/bin/python3")
  end

  test "port command line" do
    {exe, options} = Launch.port_spec(config(), "p_worker_1_7", "/tmp/d/w1.sock")
    assert exe == "/usr/bin/python3"

    assert options[:args] == [
             "-u",
             "-m",
             "snakepit_bridge.server",
             "--adapter",
             "snakepit_bridge.adapters.showcase.ShowcaseAdapter",
             "--socket",
             "/tmp/d/w1.sock",
             "--worker-id",
             "p_worker_1_7"
           ]

    for flag <- [:binary, :exit_status, :use_stdio, :stderr_to_stdout, {:line, 65_536}],
        do: assert(flag in options)
  end

  test "thread profile passes --max-workers" do
    {_, options} =
      Launch.port_spec(config(%{worker_profile: :thread, threads_per_worker: 3}), "id", "/s")

    assert ["--max-workers", "3"] ==
             Enum.drop_while(options[:args], &(&1 != "--max-workers")) |> Enum.take(2)
  end

  test "environment: PYTHONPATH order, thread caps, user values win" do
    env =
      config(%{adapter_env: [{"PYTHONPATH", "/fixtures"}, {"OMP_NUM_THREADS", "8"}, {"X", "y"}]})
      |> Launch.env()
      |> Map.new(fn {k, v} -> {to_string(k), to_string(v)} end)

    [first, second | _] = String.split(env["PYTHONPATH"], ":")
    assert first == Launch.priv_python()
    assert second == "/fixtures"
    assert env["OMP_NUM_THREADS"] == "8"
    assert env["OPENBLAS_NUM_THREADS"] == (System.get_env("OPENBLAS_NUM_THREADS") || "1")
    assert env["MKL_NUM_THREADS"] == (System.get_env("MKL_NUM_THREADS") || "1")
    assert env["NUMEXPR_NUM_THREADS"] == (System.get_env("NUMEXPR_NUM_THREADS") || "1")
    assert env["X"] == "y"
    assert env["SNAKEPIT_PROCESS_GROUP"] == "1"
  end

  test "ready line pid" do
    assert Launch.ready_pid(~s({"pid": 4242, "endpoint": "unix:/x.sock"})) == 4242
    assert Launch.ready_pid("{}") == nil
  end

  test "startup error from a SNAKEPIT_FAILED payload carries the traceback" do
    payload =
      Launch.failure_payload(
        ~s({"type": "ModuleNotFoundError", "message": "No module named 'nope'", "traceback": "Traceback\\nModuleNotFoundError"})
      )

    state = %{pool_name: :p, id: "p_worker_1_1", failure: payload, tail: []}
    error = Launch.startup_error(state, "exited", 3)
    assert error.category == :worker
    assert error.message == "Worker failed to start: ModuleNotFoundError: No module named 'nope'"
    assert error.python_traceback == "Traceback\nModuleNotFoundError"
    assert error.details.exit_status == 3
  end

  test "startup error without a payload carries the last output lines" do
    state = %{pool_name: :p, id: "w", failure: nil, tail: ["line 2", "line 1"]}
    error = Launch.startup_error(state, "Python exited with status 1 before it was ready", 1)
    assert error.message =~ "status 1"
    assert error.details.output == "line 1\nline 2"
  end
end
