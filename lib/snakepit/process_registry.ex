defmodule Snakepit.ProcessRegistry do
  @moduledoc false
  # On-disk record of the Python processes a BEAM started, so that the next start can remove
  # any that outlived a BEAM killed with SIGKILL. Defence in depth only: a worker already exits
  # on stdin EOF and on parent death (PR_SET_PDEATHSIG), and kills its own descendants.
  #
  # Layout inside the run directory (Snakepit.RuntimeDir, `<tmp>/snakepit-<beam pid>-<random>`):
  #
  #   owner              "<beam os pid> <beam start time>"
  #   procs/<os pid>     "<start time>"     one file per live worker process
  #
  # The run directory's name is the run id; every worker gets `--snakepit-run-id <run id>` on
  # its command line.
  #
  # A run directory is stale when its BEAM is gone: the owner pid does not exist or now has a
  # different start time (pid reused). For each entry of a stale directory, the process is
  # killed only if its pid, its start time *and* its command line (`snakepit_bridge.server` and
  # the run id) all still match; anything else is a process that merely reused the pid and is
  # left alone. Its descendants (and its process group, when it leads one) go with it.

  alias Snakepit.OsProcess

  require Logger

  @worker_module "snakepit_bridge.server"
  @dir_pattern ~r/\Asnakepit-(\d+)-[A-Za-z0-9_-]+\z/

  @doc false
  # Writes the owner record of a fresh run directory.
  @spec init_run_dir(Path.t()) :: :ok
  def init_run_dir(dir) do
    File.mkdir_p!(Path.join(dir, "procs"))
    pid = String.to_integer(System.pid())
    File.write!(Path.join(dir, "owner"), "#{pid} #{OsProcess.start_time(pid)}")
  end

  @doc false
  @spec run_id() :: String.t()
  def run_id, do: Path.basename(Snakepit.RuntimeDir.ensure!())

  @doc false
  # Records a worker process of this run (best effort: a full disk must not stop a worker).
  @spec register(non_neg_integer()) :: :ok
  def register(os_pid) do
    case OsProcess.start_time(os_pid) do
      nil -> :ok
      started -> _ = File.write(entry(os_pid), Integer.to_string(started))
    end

    :ok
  end

  @doc false
  @spec unregister(non_neg_integer() | nil) :: :ok
  def unregister(nil), do: :ok

  def unregister(os_pid) do
    _ = File.rm(entry(os_pid))
    :ok
  end

  defp entry(os_pid), do: Path.join([Snakepit.RuntimeDir.ensure!(), "procs", "#{os_pid}"])

  @doc false
  # Cleans every stale run directory under `tmp`; returns the OS pids it killed.
  @spec cleanup_stale(Path.t()) :: [non_neg_integer()]
  def cleanup_stale(tmp \\ System.tmp_dir!()) do
    case File.ls(tmp) do
      {:ok, entries} ->
        for name <- entries,
            [_, owner] <- [Regex.run(@dir_pattern, name)],
            dir = Path.join(tmp, name),
            stale?(dir, String.to_integer(owner)),
            pid <- cleanup_dir(dir, name),
            do: pid

      {:error, _} ->
        []
    end
  end

  defp stale?(dir, owner) do
    case read_owner(dir) do
      {^owner, started} -> OsProcess.start_time(owner) != started
      # No (readable) owner record: a directory of an older version, or one whose BEAM died
      # before writing it. Only the pid can be checked.
      _ -> not OsProcess.alive?(owner)
    end
  end

  defp read_owner(dir) do
    with {:ok, text} <- File.read(Path.join(dir, "owner")),
         [pid, started] <- String.split(text),
         {pid, ""} <- Integer.parse(pid),
         {started, ""} <- Integer.parse(started) do
      {pid, started}
    else
      _ -> nil
    end
  end

  defp cleanup_dir(dir, run_id) do
    procs = Path.join(dir, "procs")

    killed =
      for name <- ls(procs),
          {pid, ""} <- [Integer.parse(name)],
          {:ok, text} <- [File.read(Path.join(procs, name))],
          {started, _} <- [Integer.parse(String.trim(text))],
          ours?(pid, started, run_id) do
        OsProcess.kill_tree(pid)
        pid
      end

    if killed != [] do
      Logger.warning(
        "Snakepit: killed #{length(killed)} Python process(es) left by a dead BEAM " <>
          "(run #{run_id}): #{inspect(killed)}"
      )
    end

    _ = File.rm_rf(dir)
    killed
  end

  defp ours?(pid, started, run_id) do
    OsProcess.start_time(pid) == started and
      case OsProcess.cmdline(pid) do
        nil -> false
        cmdline -> String.contains?(cmdline, @worker_module) and String.contains?(cmdline, run_id)
      end
  end

  defp ls(dir) do
    case File.ls(dir) do
      {:ok, names} -> names
      {:error, _} -> []
    end
  end
end
