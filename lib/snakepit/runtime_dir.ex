defmodule Snakepit.RuntimeDir do
  @moduledoc false
  # The private per-run directory that holds the workers' Unix sockets:
  # <tmp>/snakepit-<BEAM os pid>-<random>, mode 0700, so no other user can connect to a worker.
  # Created once per application start and removed at application stop. Its name is the run id
  # of Snakepit.ProcessRegistry, which records the worker processes in it; directories left by a
  # BEAM that died without cleaning up are removed (and their processes killed, when they are
  # still provably ours) before a new one is created.

  @key {__MODULE__, :path}

  @spec ensure!() :: Path.t()
  def ensure! do
    case :persistent_term.get(@key, nil) do
      nil -> create!()
      path -> path
    end
  end

  @spec cleanup() :: :ok
  def cleanup do
    case :persistent_term.get(@key, nil) do
      nil ->
        :ok

      path ->
        File.rm_rf(path)
        :persistent_term.erase(@key)
        :ok
    end
  end

  # A short, unique socket path (sun_path is limited to 107 bytes).
  @spec socket_path(String.t()) :: Path.t()
  def socket_path(name), do: Path.join(ensure!(), name <> ".sock")

  defp create! do
    _ = Snakepit.ProcessRegistry.cleanup_stale(System.tmp_dir!())
    random = Base.url_encode64(:rand.bytes(6), padding: false)
    path = Path.join(System.tmp_dir!(), "snakepit-#{System.pid()}-#{random}")
    File.mkdir_p!(path)
    File.chmod!(path, 0o700)
    Snakepit.ProcessRegistry.init_run_dir(path)
    :persistent_term.put(@key, path)
    path
  end
end
