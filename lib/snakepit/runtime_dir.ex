defmodule Snakepit.RuntimeDir do
  @moduledoc false
  # The private per-run directory that holds the workers' Unix sockets:
  # <tmp>/snakepit-<BEAM os pid>-<random>, mode 0700, so no other user can connect to a worker.
  # Created once per application start and removed at application stop. Directories left by a
  # BEAM that died without cleaning up are removed when their owner pid no longer exists.

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
    remove_stale()
    random = Base.url_encode64(:rand.bytes(6), padding: false)
    path = Path.join(System.tmp_dir!(), "snakepit-#{System.pid()}-#{random}")
    File.mkdir_p!(path)
    File.chmod!(path, 0o700)
    :persistent_term.put(@key, path)
    path
  end

  defp remove_stale do
    tmp = System.tmp_dir!()

    for entry <- File.ls!(tmp),
        [_, pid] <- [Regex.run(~r/\Asnakepit-(\d+)-[A-Za-z0-9_-]+\z/, entry)],
        pid != System.pid(),
        not File.exists?("/proc/#{pid}") do
      File.rm_rf(Path.join(tmp, entry))
    end

    :ok
  rescue
    _ -> :ok
  end
end
