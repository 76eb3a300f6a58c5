defmodule Snakepit.Integration.FaultOrphansTest do
  # Issue #6: nothing is left behind when the BEAM is killed with SIGKILL, and the stale process
  # registry of a dead run never kills a process that is not ours.
  use ExUnit.Case, async: false

  import Snakepit.TestSupport
  import Snakepit.FaultSupport

  alias Snakepit.{OsProcess, ProcessRegistry}

  @moduletag :capture_log

  @root Path.expand("../..", __DIR__)
  @fixtures Path.expand("../fixtures/python", __DIR__)

  # Runs in a separate BEAM: a pool of 2 workers, one of them busy, each with a child (one in
  # its own session); prints the OS pids, then waits to be killed.
  @child_script """
  [fixtures] = System.argv()
  Application.put_env(:snakepit, :pooling_enabled, true)
  Application.put_env(:snakepit, :pools, [
    %{name: :orphans, pool_size: 2,
      adapter_args: ["--adapter", "snakepit_test_adapters.FaultAdapter"],
      adapter_env: [{"PYTHONPATH", fixtures}]}
  ])
  {:ok, _} = Application.ensure_all_started(:snakepit)
  :ok = Snakepit.Pool.await_ready(Snakepit.Pool, 60_000)
  {:ok, setsid_child} = Snakepit.execute("spawn_child", %{setsid: true}, pool_name: :orphans)
  {:ok, child} = Snakepit.execute("spawn_child", %{setsid: false}, pool_name: :orphans)
  spawn(fn -> Snakepit.execute("sleep_ms", %{ms: 600_000}, pool_name: :orphans, timeout: :infinity) end)
  {:ok, {resource, _}} = Snakepit.Pool.lookup(:orphans)
  Stream.repeatedly(fn -> Process.sleep(10); Snakepit.Native.pool_stats(resource).in_flight end)
  |> Enum.find(&(&1 == 1))
  pids = Snakepit.Worker.os_pids() ++ [setsid_child, child]
  IO.puts("CHILD_BEAM " <> Enum.join([System.pid() | pids], " "))
  Process.sleep(:infinity)
  """

  defp start_child_beam(dir) do
    script = Path.join(dir, "child_beam.exs")
    File.write!(script, @child_script)
    ebin = Path.join(@root, "_build/test/lib/snakepit/ebin")

    port =
      Port.open({:spawn_executable, System.find_executable("elixir")}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        {:line, 4096},
        args: ["-pa", ebin, script, @fixtures],
        env: [{~c"SNAKEPIT_PYTHON", String.to_charlist(python!())}]
      ])

    {port, await_pids(port, [])}
  end

  defp await_pids(port, output) do
    receive do
      {^port, {:data, {:eol, "CHILD_BEAM " <> pids}}} ->
        pids |> String.split() |> Enum.map(&String.to_integer/1)

      {^port, {:data, {_, line}}} ->
        await_pids(port, [line | output])

      {^port, {:exit_status, status}} ->
        flunk("child BEAM exited with #{status}:\n#{output |> Enum.reverse() |> Enum.join("\n")}")
    after
      60_000 -> flunk("child BEAM did not start its pool")
    end
  end

  test "after kill -9 of the BEAM every worker and every child is gone within 3 s" do
    dir = tmp_dir!("snakepit-orphans")
    {port, [beam | pids]} = start_child_beam(dir)
    assert length(pids) == 4
    assert Enum.all?([beam | pids], &OsProcess.alive?/1)

    # The child BEAM's run directory records its workers for the next start.
    run_dir =
      Enum.find(Path.wildcard(Path.join(System.tmp_dir!(), "snakepit-#{beam}-*")), &File.dir?/1)

    assert run_dir
    workers = pids |> Enum.take(2) |> Enum.map(&Integer.to_string/1) |> Enum.sort()
    assert Enum.sort(File.ls!(Path.join(run_dir, "procs"))) == workers

    OsProcess.kill(beam, "KILL")
    assert_receive {^port, {:exit_status, 137}}, 5_000
    killed_at = System.monotonic_time(:millisecond)

    gone = eventually(fn -> Enum.all?(pids, &(not OsProcess.alive?(&1))) end, 3_000)
    elapsed = System.monotonic_time(:millisecond) - killed_at
    survivors = Enum.filter(pids, &OsProcess.alive?/1)
    Enum.each(survivors, &OsProcess.kill(&1, "KILL"))
    assert gone, "still alive #{elapsed} ms after kill -9: #{inspect(survivors)}"
    assert elapsed <= 3_000

    # The dead run's directory is stale: the next cleanup removes it (nothing left to kill).
    assert ProcessRegistry.cleanup_stale() == []
    refute File.exists?(run_dir)
  end

  describe "stale registry entries" do
    # Starts an OS process (killed when the test ends), returns its pid and, with `wait_line`,
    # the first line it prints.
    defp spawn_os(executable, args, wait_line \\ false) do
      port = Port.open({:spawn_executable, executable}, [:binary, {:line, 1024}, args: args])

      {:os_pid, pid} = Port.info(port, :os_pid)
      on_exit(fn -> OsProcess.kill(pid, "KILL") end)

      line =
        if wait_line do
          receive do
            {^port, {:data, {:eol, line}}} -> line
          after
            10_000 -> flunk("no output from #{executable}")
          end
        end

      {pid, line}
    end

    # A process that looks like a worker of run `run_id` (module name and run marker on its
    # command line) and has a child in its own session; returns {pid, child_pid}.
    defp fake_worker(run_id) do
      code = """
      import subprocess, time
      child = subprocess.Popen(["sleep", "1000"], start_new_session=True)
      print(child.pid, flush=True)
      time.sleep(1000)
      """

      {pid, line} =
        spawn_os(
          python!(),
          ["-c", code, "snakepit_bridge.server", "--snakepit-run-id", run_id],
          true
        )

      child = String.to_integer(line)
      on_exit(fn -> OsProcess.kill(child, "KILL") end)
      {pid, child}
    end

    defp dead_pid do
      {out, 0} = System.cmd("sh", ["-c", "echo $$"])
      pid = out |> String.trim() |> String.to_integer()
      assert OsProcess.await_exit(pid, 1_000)
      pid
    end

    # The run directory `run_id` under `tmp` as a BEAM that started at `owner_start` would have
    # left it, recording `entries` ({os pid, start time}).
    defp forge_run_dir(tmp, run_id, owner_start, entries) do
      [_, owner] = Regex.run(~r/^snakepit-(\d+)-/, run_id)
      dir = Path.join(tmp, run_id)
      File.mkdir_p!(Path.join(dir, "procs"))
      File.write!(Path.join(dir, "owner"), "#{owner} #{owner_start}")

      for {pid, start} <- entries,
          do: File.write!(Path.join([dir, "procs", "#{pid}"]), "#{start}")

      dir
    end

    test "only processes whose pid, start time and command line match are killed" do
      tmp = tmp_dir!("snakepit-registry")
      owner = dead_pid()
      run_id = "snakepit-#{owner}-forged"

      # Our leftover worker (and its setsid child): must die.
      {worker, worker_child} = fake_worker(run_id)
      # A process that reused a recorded pid: right start time, wrong command line.
      {sleeper, _} = spawn_os(System.find_executable("sleep"), ["1000"])
      # A worker-looking process whose start time differs from the record: a reused pid.
      {lookalike, lookalike_child} = fake_worker(run_id)

      dir =
        forge_run_dir(tmp, run_id, 1, [
          {worker, OsProcess.start_time(worker)},
          {sleeper, OsProcess.start_time(sleeper)},
          {lookalike, OsProcess.start_time(lookalike) - 1},
          {dead_pid(), 1}
        ])

      # A live run (this BEAM) is never touched.
      me = String.to_integer(System.pid())
      live_run = "snakepit-#{me}-live"
      {live_worker, _} = fake_worker(live_run)

      live_dir =
        forge_run_dir(tmp, live_run, OsProcess.start_time(me), [
          {live_worker, OsProcess.start_time(live_worker)}
        ])

      assert ProcessRegistry.cleanup_stale(tmp) == [worker]

      assert OsProcess.await_exit(worker, 2_000)
      assert OsProcess.await_exit(worker_child, 2_000)
      refute File.exists?(dir)

      for pid <- [sleeper, lookalike, lookalike_child, live_worker],
          do: assert(OsProcess.alive?(pid), "#{pid} was killed")

      assert File.dir?(live_dir)
    end

    test "a BEAM whose pid was reused by another process counts as dead" do
      tmp = tmp_dir!("snakepit-registry")
      # The recorded owner pid is alive (the sleeper), but with another start time.
      {sleeper, _} = spawn_os(System.find_executable("sleep"), ["1000"])
      run_id = "snakepit-#{sleeper}-reused"
      {worker, _} = fake_worker(run_id)

      forge_run_dir(tmp, run_id, OsProcess.start_time(sleeper) - 1, [
        {worker, OsProcess.start_time(worker)}
      ])

      assert ProcessRegistry.cleanup_stale(tmp) == [worker]
      assert OsProcess.await_exit(worker, 2_000)
      assert OsProcess.alive?(sleeper)
    end

    test "the application start cleans up after a dead run" do
      owner = dead_pid()
      run_id = "snakepit-#{owner}-appstart"
      {worker, child} = fake_worker(run_id)
      {sleeper, _} = spawn_os(System.find_executable("sleep"), ["1000"])
      entries = for pid <- [worker, sleeper], do: {pid, OsProcess.start_time(pid)}
      dir = forge_run_dir(System.tmp_dir!(), run_id, 1, entries)
      on_exit(fn -> File.rm_rf(dir) end)

      start_snakepit!(pools: [fault_pool(:orphans, %{pool_size: 1})])

      assert OsProcess.await_exit(worker, 2_000)
      assert OsProcess.await_exit(child, 2_000)
      assert OsProcess.alive?(sleeper)
      refute File.exists?(dir)
    end
  end
end
