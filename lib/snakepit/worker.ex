defmodule Snakepit.Worker do
  @moduledoc """
  Owner of one Python worker OS process (through a Port).

  Lifecycle:

  1. `init/1` picks a fresh worker id `"<pool>_worker_<slot>_<unique>"` and returns at once, so a
     pool starts all its workers in parallel.
  2. The Python process is spawned as
     `python -u -m snakepit_bridge.server <adapter args> --socket <sock> --worker-id <id>`,
     its socket living in the private per-run directory (`Snakepit.RuntimeDir`).
  3. On the `SNAKEPIT_READY {...}` stdout line the worker registers the endpoint with the NIF
     scheduler (`Snakepit.Native.pool_add_worker/4`) and tells its `Snakepit.Pool`.
     A `SNAKEPIT_FAILED {...}` line, an exit before ready, or no ready line within
     `worker_ready_timeout` is a startup failure; the error carries the Python traceback.
  4. When Python exits after ready, the worker is removed from the scheduler (in-flight callers
     get `{:worker_exit, id, {:exit_status, status}}`) and this process stops; the pool starts a
     replacement with a new id. Because the Port reports the exit only at EOF of Python's
     stdout, a ready worker also checks every 200 ms that its process still exists (see
     `:check_alive`).
  5. `terminate/2` closes the port (stdin EOF makes Python exit), waits up to
     `graceful_shutdown_timeout_ms`, then SIGKILLs the process (and its process group when
     Python leads one), and removes the socket. A worker recycled because an abandoned call
     overran the grace (`{:shutdown, :recycled}`) is SIGKILLed at once: its Python is known to
     be stuck, and the pool gets its capacity back only when the process is gone.

  Every Python process is recorded in `Snakepit.ProcessRegistry` while it runs, so a later
  BEAM can clean up after this one if it is killed with SIGKILL.

  Other output lines are logged at debug level; the last lines are kept for error messages.
  """

  use GenServer, restart: :temporary

  require Logger

  alias Snakepit.{Native, OsProcess, ProcessRegistry, RuntimeDir}
  alias Snakepit.Worker.Launch

  @tail_lines 40
  @max_partial_bytes 1_048_576
  # How often a ready worker checks that its Python process still exists (see :check_alive),
  # and how long it then waits for the Port to report the exit status.
  @liveness_check_ms 200
  @exit_report_ms 2_000

  @doc false
  def child_spec(opts) do
    config = Keyword.fetch!(opts, :config)

    %{
      id: {__MODULE__, Keyword.fetch!(opts, :slot)},
      start: {__MODULE__, :start_link, [opts]},
      restart: :temporary,
      # terminate/2 waits for Python to exit before SIGKILL; leave it room.
      shutdown: config.graceful_shutdown_timeout_ms + 2_000
    }
  end

  @doc false
  def start_link(opts), do: GenServer.start_link(__MODULE__, opts)

  @doc false
  @spec stop_async(pid(), term()) :: :ok
  def stop_async(pid, reason), do: GenServer.cast(pid, {:stop, reason})

  @doc """
  The OS pid of a worker's Python process, by worker id (nil when unknown).
  """
  @spec os_pid(String.t()) :: non_neg_integer() | nil
  def os_pid(worker_id) do
    case Registry.lookup(Snakepit.Pool.Registry, {:worker, worker_id}) do
      [{_pid, %{os_pid: os_pid}}] -> os_pid
      _ -> nil
    end
  end

  @doc "OS pids of all running worker processes (all pools)."
  @spec os_pids() :: [non_neg_integer()]
  def os_pids do
    Snakepit.Pool.Registry
    |> Registry.select([{{{:worker, :_}, :_, :"$1"}, [], [:"$1"]}])
    |> Enum.flat_map(fn
      %{os_pid: pid} when is_integer(pid) -> [pid]
      _ -> []
    end)
  rescue
    ArgumentError -> []
  end

  # -- GenServer ---------------------------------------------------------------------------------

  @impl true
  def init(opts) do
    # Trap exits so terminate/2 runs on supervisor shutdown and can reap the OS process.
    Process.flag(:trap_exit, true)

    pool_name = Keyword.fetch!(opts, :pool_name)
    slot = Keyword.fetch!(opts, :slot)
    config = Keyword.fetch!(opts, :config)
    {:ok, {resource, _}} = Snakepit.Pool.lookup(pool_name)

    id = "#{pool_name}_worker_#{slot}_#{System.unique_integer([:positive])}"
    {:ok, _} = Registry.register(Snakepit.Pool.Registry, {:worker, id}, %{pool_name: pool_name})

    state = %{
      id: id,
      pool_name: pool_name,
      slot: slot,
      pool_pid: Keyword.fetch!(opts, :pool_pid),
      config: config,
      resource: resource,
      port: nil,
      os_pid: nil,
      pgid: nil,
      socket: nil,
      status: :starting,
      partial: [],
      partial_size: 0,
      tail: [],
      failure: nil,
      ready_timer: nil,
      # The pipe behind Python's stdout ("pipe:[inode]"), read at ready; see :check_alive.
      stdout_pipe: nil,
      started_at: System.monotonic_time()
    }

    {:ok, state, {:continue, :spawn}}
  end

  @impl true
  def handle_continue(:spawn, state) do
    socket = RuntimeDir.socket_path("w#{System.unique_integer([:positive])}")
    _ = File.rm(socket)

    {executable, options} =
      Launch.port_spec(state.config, state.id, socket, ProcessRegistry.run_id())

    try do
      port = Port.open({:spawn_executable, executable}, options)
      {:os_pid, os_pid} = Port.info(port, :os_pid)
      ProcessRegistry.register(os_pid)

      Registry.update_value(
        Snakepit.Pool.Registry,
        {:worker, state.id},
        &Map.put(&1, :os_pid, os_pid)
      )

      timer = Process.send_after(self(), :ready_timeout, state.config.worker_ready_timeout)
      {:noreply, %{state | port: port, os_pid: os_pid, socket: socket, ready_timer: timer}}
    rescue
      error ->
        message = "cannot spawn #{executable}: #{Exception.message(error)}"
        startup_failed(%{state | socket: socket}, message, nil)
    end
  end

  @impl true
  def handle_cast({:stop, reason}, state), do: {:stop, reason, state}

  @impl true
  def handle_info({port, {:data, {:noeol, chunk}}}, %{port: port} = state) do
    if state.partial_size + byte_size(chunk) > @max_partial_bytes do
      Logger.warning("Snakepit worker #{state.id}: dropping an over-long output line")
      {:noreply, %{state | partial: [], partial_size: 0}}
    else
      {:noreply,
       %{
         state
         | partial: [state.partial, chunk],
           partial_size: state.partial_size + byte_size(chunk)
       }}
    end
  end

  def handle_info({port, {:data, {:eol, chunk}}}, %{port: port} = state) do
    line = IO.iodata_to_binary([state.partial, chunk])
    handle_line(line, %{state | partial: [], partial_size: 0})
  end

  def handle_info({port, {:exit_status, status}}, %{port: port} = state) do
    ProcessRegistry.unregister(state.os_pid)
    state = %{state | port: nil}

    case state.status do
      :starting ->
        startup_failed(state, "Python exited with status #{status} before it was ready", status)

      :ready ->
        Logger.warning(
          "Snakepit worker #{state.id} (pool #{inspect(state.pool_name)}): " <>
            "Python process #{state.os_pid} exited with status #{status}"
        )

        Native.pool_remove_worker(state.resource, state.id, {:exit_status, status})
        {:stop, {:shutdown, {:exit_status, status}}, %{state | status: :exited}}
    end
  end

  def handle_info(:ready_timeout, %{status: :starting} = state) do
    message = "no SNAKEPIT_READY line within #{state.config.worker_ready_timeout} ms"
    startup_failed(state, message, nil)
  end

  def handle_info(:ready_timeout, state), do: {:noreply, state}

  # The Port reports the exit status only once Python's stdout reaches EOF, and a child that
  # inherited stdout keeps it open after Python died: the dead worker would stay in the
  # scheduler. So a ready worker also checks that its process is alive; once it is not, the
  # processes still holding the pipe (its process group, and anyone else holding that very
  # pipe, i.e. its descendants) are killed, the pipe closes and the Port reports the real exit
  # status.
  def handle_info(:check_alive, %{status: :ready, port: port} = state) when port != nil do
    if OsProcess.alive?(state.os_pid) do
      schedule_liveness_check()
    else
      Logger.warning(
        "Snakepit worker #{state.id}: Python #{state.os_pid} is gone but its output pipe is " <>
          "still open (a child inherited it); killing the holders"
      )

      if state.pgid, do: OsProcess.kill_group(state.pgid, "KILL")
      if state.stdout_pipe, do: OsProcess.kill_fd_holders(state.stdout_pipe)
      Process.send_after(self(), :exit_unreported, @exit_report_ms)
    end

    {:noreply, state}
  end

  def handle_info(:check_alive, state), do: {:noreply, state}

  # The holders could not all be killed (e.g. another user's process): give up on the status.
  def handle_info(:exit_unreported, %{status: :ready, port: port} = state) when port != nil do
    close_port(port)
    handle_info({port, {:exit_status, :unknown}}, state)
  end

  def handle_info(:exit_unreported, state), do: {:noreply, state}

  def handle_info({:EXIT, _port_or_pid, _reason}, state), do: {:noreply, state}

  def handle_info(_message, state), do: {:noreply, state}

  @impl true
  def terminate(reason, state) do
    if state.status == :ready do
      Native.pool_remove_worker(state.resource, state.id, exit_reason(reason))
    end

    stop_python(state, stop_grace(reason, state.config))
    ProcessRegistry.unregister(state.os_pid)
    if state.socket, do: File.rm(state.socket)

    Snakepit.Telemetry.execute(
      [:snakepit, :pool, :worker, :terminated],
      %{lifetime: System.monotonic_time() - state.started_at, total_commands: 0},
      %{
        node: node(),
        pool_name: state.pool_name,
        worker_id: state.id,
        worker_pid: self(),
        reason: reason,
        planned: planned?(reason)
      }
    )

    :ok
  end

  # -- stdout protocol ---------------------------------------------------------------------------

  # Only the server prints this line after binding its socket; an adapter that prints the same
  # text while it is imported (before the socket exists) must not register the worker early.
  defp handle_line("SNAKEPIT_READY " <> json = line, %{status: :starting} = state) do
    if File.exists?(state.socket) do
      register_ready(json, state)
    else
      log_line(line, state)
    end
  end

  defp handle_line("SNAKEPIT_FAILED " <> json, state) do
    {:noreply, %{state | failure: Launch.failure_payload(json)}}
  end

  # The server starts its protocol lines on a fresh line (see snakepit_bridge.server).
  defp handle_line("", state), do: {:noreply, state}
  defp handle_line(line, state), do: log_line(line, state)

  defp log_line(line, state) do
    Logger.debug("[snakepit #{state.id}] #{line}")
    {:noreply, %{state | tail: Enum.take([line | state.tail], @tail_lines)}}
  end

  defp register_ready(json, state) do
    python_pid = Launch.ready_pid(json) || state.os_pid
    endpoint = "unix:" <> state.socket

    case Native.pool_add_worker(state.resource, state.id, endpoint, state.config.capacity) do
      :ok ->
        cancel_timer(state.ready_timer)
        send(state.pool_pid, {:worker_ready, state.slot, self(), state.id})

        Snakepit.Telemetry.execute(
          [:snakepit, :pool, :worker, :spawned],
          %{
            duration: System.monotonic_time() - state.started_at,
            system_time: System.system_time()
          },
          %{
            node: node(),
            pool_name: state.pool_name,
            worker_id: state.id,
            worker_pid: self(),
            python_pid: python_pid,
            mode: state.config.worker_profile
          }
        )

        schedule_liveness_check()

        {:noreply,
         %{
           state
           | status: :ready,
             ready_timer: nil,
             pgid: OsProcess.group_led_by(state.os_pid),
             stdout_pipe: OsProcess.fd_target(state.os_pid, 1)
         }}

      {:error, reason} ->
        startup_failed(state, "the scheduler refused the worker: #{inspect(reason)}", nil)
    end
  end

  # -- failure and shutdown ----------------------------------------------------------------------

  defp startup_failed(state, summary, exit_status) do
    cancel_timer(state.ready_timer)
    error = Launch.startup_error(state, summary, exit_status)
    Logger.error("Snakepit worker #{state.id} failed to start: #{error}")
    send(state.pool_pid, {:worker_start_failed, state.slot, self(), error})
    {:stop, {:shutdown, {:startup_failed, error.message}}, %{state | status: :failed}}
  end

  defp stop_python(%{os_pid: nil}, _grace), do: :ok

  defp stop_python(state, grace) do
    if state.port, do: close_port(state.port)

    unless OsProcess.await_exit(state.os_pid, grace) do
      if grace > 0 do
        Logger.warning(
          "Snakepit worker #{state.id}: Python #{state.os_pid} ignored stdin EOF, killing"
        )
      end

      # A SIGKILLed Python cannot kill its descendants itself (it does on an orderly exit).
      OsProcess.kill_tree(state.os_pid)
      OsProcess.await_exit(state.os_pid, 1_000)
    end

    # Python made itself a process-group leader: take down anything it left in the group.
    if state.pgid, do: OsProcess.kill_group(state.pgid, "KILL")
    :ok
  end

  defp close_port(port) do
    Port.close(port)
  rescue
    ArgumentError -> :ok
  end

  defp schedule_liveness_check, do: Process.send_after(self(), :check_alive, @liveness_check_ms)

  # How long Python may take to exit after stdin EOF before it is killed. During an application
  # stop the shutdown grace started when the pools were closed and the pool already waited for
  # its calls (Snakepit.Pool's drain): what is left of it, and at least enough for an idle
  # worker's orderly exit (it cleans up its children itself).
  @min_stop_ms 200
  defp stop_grace({:shutdown, :recycled}, _config), do: 0

  defp stop_grace(_reason, config) do
    grace = config.graceful_shutdown_timeout_ms
    min(grace, max(Snakepit.Application.grace_left(grace), @min_stop_ms))
  end

  defp exit_reason({:shutdown, reason}), do: reason
  defp exit_reason(reason), do: reason

  defp planned?(reason), do: reason in [:normal, :shutdown] or match?({:shutdown, _}, reason)

  defp cancel_timer(nil), do: :ok
  defp cancel_timer(ref), do: Process.cancel_timer(ref)
end
