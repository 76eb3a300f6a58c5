defmodule Snakepit.Mix.CargoCompilerTest do
  # The :cargo Mix compiler (mix/cargo_compiler.exs) runs cargo only when an input changed. It
  # is exercised on a throwaway Mix project whose `cargo` is a stub logging its invocations, so
  # the test needs neither the real build nor the shared _build directory.
  use ExUnit.Case, async: true

  @compiler Path.expand("../../mix/cargo_compiler.exs", __DIR__)

  @moduletag :tmp_dir
  @moduletag timeout: 120_000

  setup %{tmp_dir: dir} do
    project = Path.join(dir, "proj")
    bin = Path.join(dir, "bin")
    log = Path.join(dir, "cargo.log")

    for sub <- ["native/fake_nif/src", "proto", "lib"], do: File.mkdir_p!(Path.join(project, sub))
    File.mkdir_p!(bin)

    File.write!(Path.join(project, "mix.exs"), """
    Code.require_file(#{inspect(@compiler)})

    defmodule FakeNif.MixProject do
      use Mix.Project

      def project do
        [
          app: :fake_nif_app,
          version: "0.1.0",
          compilers: [:cargo] ++ Mix.compilers(),
          cargo_crates: [fake_nif: [package: "fake_nif", profile: :release]],
          deps: []
        ]
      end
    end
    """)

    File.write!(Path.join(project, "lib/fake.ex"), "defmodule FakeNifApp do\nend\n")
    File.write!(Path.join(project, "Cargo.toml"), "[workspace]\n")
    File.write!(Path.join(project, "Cargo.lock"), "")
    File.write!(Path.join(project, "native/fake_nif/src/lib.rs"), "// v1\n")
    File.write!(Path.join(project, "proto/x.proto"), "syntax = \"proto3\";\n")

    cargo = Path.join(bin, "cargo")

    File.write!(cargo, """
    #!/bin/sh
    echo "$*" >> #{log}
    mkdir -p target/release
    date +%s%N > target/release/libfake_nif.so
    """)

    File.chmod!(cargo, 0o755)
    %{project: project, bin: bin, log: log}
  end

  defp compile(%{project: project, bin: bin}) do
    env = [
      {"MIX_ENV", "dev"},
      {"PATH", bin <> ":" <> System.get_env("PATH", "")},
      {"SNAKEPIT_SKIP_CARGO", nil},
      {"SNAKEPIT_CARGO_PROFILE", nil}
    ]

    {output, status} =
      System.cmd(System.find_executable("mix"), ["compile"],
        cd: project,
        env: env,
        stderr_to_stdout: true
      )

    assert status == 0, output
    output
  end

  defp cargo_runs(%{log: log}) do
    case File.read(log) do
      {:ok, text} -> String.split(text, "\n", trim: true)
      {:error, :enoent} -> []
    end
  end

  # Inputs are compared by mtime in whole seconds: edits are dated into the future, each one
  # later than the one before (`step`), so no two fall into the same second.
  defp touch_later(path, step), do: File.touch!(path, System.os_time(:second) + 10 * step)

  test "cargo runs on the first build and again only when native/, proto/ or Cargo.* change",
       ctx do
    compile(ctx)
    assert cargo_runs(ctx) == ["build -p fake_nif --release"]
    lib = Path.join(ctx.project, "priv/native/libfake_nif.so")
    assert File.exists?(lib)

    # Nothing changed: no cargo run (also after an Elixir-only change).
    File.write!(Path.join(ctx.project, "lib/fake.ex"), "defmodule FakeNifApp do\n  @x 1\nend\n")
    output = compile(ctx)
    refute output =~ "Compiling NIF crate"
    assert length(cargo_runs(ctx)) == 1

    inputs = ["native/fake_nif/src/lib.rs", "proto/x.proto", "Cargo.lock"]

    for {input, step} <- Enum.with_index(inputs, 1) do
      before = length(cargo_runs(ctx))
      touch_later(Path.join(ctx.project, input), step)
      compile(ctx)
      assert length(cargo_runs(ctx)) == before + 1, "#{input} did not trigger cargo"
      compile(ctx)
      assert length(cargo_runs(ctx)) == before + 1, "cargo ran twice for #{input}"
    end

    # The installed library went missing: rebuilt.
    before = length(cargo_runs(ctx))
    File.rm!(lib)
    compile(ctx)
    assert length(cargo_runs(ctx)) == before + 1
    assert File.exists?(lib)
  end
end
