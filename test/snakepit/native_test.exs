defmodule Snakepit.NativeTest do
  # A missing NIF library: the application refuses to start with a message naming the fix,
  # and the stubs raise the same message (instead of Erlang's generic :undef/nif_not_loaded).
  # Runs a separate VM on a copy of this build's ebin without priv/native.
  use ExUnit.Case, async: true

  @moduletag :tmp_dir

  test "without the NIF library the start fails with a message naming the fix", %{tmp_dir: dir} do
    ebin = Path.join(dir, "lib/snakepit/ebin")
    File.mkdir_p!(ebin)
    File.cp_r!(Application.app_dir(:snakepit, "ebin"), ebin)
    refute File.exists?(Path.join(dir, "lib/snakepit/priv/native"))

    script = """
    Application.put_env(:snakepit, :pooling_enabled, true)
    IO.inspect(Application.ensure_all_started(:snakepit), label: "START", printable_limit: :infinity)
    IO.inspect(Snakepit.Native.loaded?(), label: "LOADED")

    try do
      Snakepit.Native.pool_stats(nil)
    rescue
      e -> IO.puts("RAISED " <> Exception.message(e))
    end
    """

    {output, 0} =
      System.cmd(System.find_executable("elixir"), ["-pa", ebin, "-e", script],
        stderr_to_stdout: true,
        env: [{"SNAKEPIT_PYTHON", Snakepit.TestSupport.python!()}]
      )

    fix = "run `mix compile` (needs cargo: https://rustup.rs) to build native/snakepit_nif"
    assert output =~ ~r/START: \{:error,\s+\{:snakepit,\s+\{\{:nif_not_loaded,/
    assert output =~ "Snakepit NIF is not loaded: #{fix}"
    assert output =~ "LOADED: false"
    assert output =~ "RAISED Snakepit NIF is not loaded: #{fix}"
    # The loader's log line says why the library did not load.
    assert output =~ "Snakepit NIF failed to load"
    assert output =~ "libsnakepit_nif.so: cannot open shared object file"
  end
end
