defmodule Snakepit.OsProcess do
  @moduledoc false
  # Minimal OS process helpers (Linux /proc + kill(1)) for reaping worker processes.
  # A zombie (state Z) counts as gone: it runs no code, and PID 1 of a container may never reap
  # it.

  @spec alive?(non_neg_integer()) :: boolean()
  def alive?(pid) when is_integer(pid) do
    case File.read("/proc/#{pid}/stat") do
      {:ok, stat} -> state(stat) not in ["Z", "X"]
      {:error, _} -> false
    end
  end

  # Polls until `pid` has exited or `timeout_ms` elapsed; true when it is gone.
  @spec await_exit(non_neg_integer(), non_neg_integer()) :: boolean()
  def await_exit(pid, timeout_ms) do
    deadline = System.monotonic_time(:millisecond) + timeout_ms
    poll(pid, deadline)
  end

  defp poll(pid, deadline) do
    cond do
      not alive?(pid) ->
        true

      System.monotonic_time(:millisecond) >= deadline ->
        false

      true ->
        Process.sleep(10)
        poll(pid, deadline)
    end
  end

  @spec kill(non_neg_integer(), String.t()) :: :ok
  def kill(pid, signal) do
    _ = System.cmd("kill", ["-#{signal}", Integer.to_string(pid)], stderr_to_stdout: true)
    :ok
  end

  # SIGKILLs `pid`, the process group it leads (if any) and its descendants. The descendants
  # are collected first: once `pid` is dead they are reparented and cannot be found through it
  # (a child that called setsid() is in neither the group nor, afterwards, the tree).
  @spec kill_tree(non_neg_integer()) :: :ok
  def kill_tree(pid) do
    descendants = descendants(pid)
    group = group_led_by(pid)
    kill(pid, "KILL")
    if group, do: kill_group(group, "KILL")
    Enum.each(descendants, &kill(&1, "KILL"))
  end

  # What file descriptor `fd` of `pid` refers to (e.g. "pipe:[1234]"), or nil.
  @spec fd_target(non_neg_integer(), non_neg_integer()) :: String.t() | nil
  def fd_target(pid, fd) do
    case File.read_link("/proc/#{pid}/fd/#{fd}") do
      {:ok, target} -> target
      {:error, _} -> nil
    end
  end

  # SIGKILLs every process that holds a file descriptor on `target` ("pipe:[inode]"). Used for
  # a worker's private stdout pipe only: whoever holds it descends from that worker.
  @spec kill_fd_holders(String.t()) :: :ok
  def kill_fd_holders("pipe:" <> _ = target) do
    self_pid = String.to_integer(System.pid())

    for pid <- list_proc(),
        pid != self_pid,
        {:ok, fds} <- [File.ls("/proc/#{pid}/fd")],
        Enum.any?(fds, &(File.read_link("/proc/#{pid}/fd/#{&1}") == {:ok, target})) do
      kill(pid, "KILL")
    end

    :ok
  end

  def kill_fd_holders(_target), do: :ok

  @spec kill_group(non_neg_integer(), String.t()) :: :ok
  def kill_group(pgid, signal) do
    _ = System.cmd("kill", ["-#{signal}", "--", "-#{pgid}"], stderr_to_stdout: true)
    :ok
  end

  # The process group id when `pid` leads its own group (e.g. Python called setsid()), else nil.
  # Groups led by someone else (the BEAM's own group) must never be signalled.
  @spec group_led_by(non_neg_integer() | nil) :: non_neg_integer() | nil
  def group_led_by(nil), do: nil

  def group_led_by(pid) do
    with {:ok, stat} <- File.read("/proc/#{pid}/stat"),
         [_state, _ppid, pgrp | _] <- fields_after_comm(stat),
         {^pid, ""} <- Integer.parse(pgrp) do
      pid
    else
      _ -> nil
    end
  end

  @doc false
  # The start time of `pid` (/proc/<pid>/stat field 22, clock ticks since boot), or nil when the
  # process does not exist. Together with the pid it names a process uniquely: a reused pid
  # has a later start time.
  @spec start_time(non_neg_integer()) :: non_neg_integer() | nil
  def start_time(pid) do
    with {:ok, stat} <- File.read("/proc/#{pid}/stat"),
         # fields_after_comm starts at field 3 (state); field 22 is at index 19.
         value when is_binary(value) <- stat |> fields_after_comm() |> Enum.at(19),
         {ticks, ""} <- Integer.parse(value) do
      ticks
    else
      _ -> nil
    end
  end

  @doc false
  # The command line of `pid` with arguments joined by spaces, or nil.
  @spec cmdline(non_neg_integer()) :: String.t() | nil
  def cmdline(pid) do
    case File.read("/proc/#{pid}/cmdline") do
      {:ok, raw} -> String.replace(raw, <<0>>, " ")
      {:error, _} -> nil
    end
  end

  @doc false
  # Live descendants of `pid` (children first, by walking the ppid links in /proc).
  @spec descendants(non_neg_integer()) :: [non_neg_integer()]
  def descendants(pid) do
    children =
      for entry <- list_proc(),
          {:ok, stat} <- [File.read("/proc/#{entry}/stat")],
          [state, ppid | _] <- [fields_after_comm(stat)],
          state not in ["Z", "X"],
          reduce: %{} do
        acc -> Map.update(acc, String.to_integer(ppid), [entry], &[entry | &1])
      end

    walk(children, [pid], [])
  end

  defp walk(_children, [], found), do: Enum.reverse(found)

  defp walk(children, [pid | rest], found) do
    kids = Map.get(children, pid, [])
    walk(children, rest ++ kids, Enum.reverse(kids) ++ found)
  end

  defp list_proc do
    case File.ls("/proc") do
      {:ok, entries} ->
        for entry <- entries, {pid, ""} <- [Integer.parse(entry)], do: pid

      {:error, _} ->
        []
    end
  end

  # /proc/<pid>/stat is "pid (comm) state ppid pgrp ..."; comm may contain spaces and parens.
  defp fields_after_comm(stat) do
    case :binary.matches(stat, ")") do
      [] ->
        []

      matches ->
        {pos, _} = List.last(matches)
        stat |> binary_part(pos + 1, byte_size(stat) - pos - 1) |> String.split()
    end
  end

  defp state(stat), do: stat |> fields_after_comm() |> List.first()
end
