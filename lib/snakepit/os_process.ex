defmodule Snakepit.OsProcess do
  @moduledoc false
  # Minimal OS process helpers (Linux /proc + kill(1)) for reaping worker processes.

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
