defmodule Mix.Tasks.Compile.Cargo do
  @moduledoc """
  Builds the Rust NIF crate(s) of the Cargo workspace and copies each cdylib into `priv/native/`.

  Configure in `mix.exs` `project/0`:

      cargo_crates: [snakepit_nif: [package: "snakepit_nif", profile: :release]]

  The workspace root is the project root (`Cargo.toml` there). The profile defaults to the crate's
  `:profile` (release); set `SNAKEPIT_CARGO_PROFILE=debug` for fast local iteration, or
  `SNAKEPIT_SKIP_CARGO=1` to compile only the Elixir code (lint jobs, NIF under construction).

  Cargo is not invoked at all when no file under `native/` or `proto/`, nor `Cargo.toml` /
  `Cargo.lock`, is newer than this compiler's manifest and the library in `priv/native/` was built
  with the same profile, so an unchanged `mix compile` costs a directory walk instead of a cargo run.
  """
  use Mix.Task.Compiler

  @recursive true
  @manifest "compile.cargo"
  @inputs ["native", "proto", "Cargo.toml", "Cargo.lock"]

  @impl true
  def run(_args) do
    if System.get_env("SNAKEPIT_SKIP_CARGO") in ["1", "true"] do
      {:noop, []}
    else
      build_all()
    end
  end

  defp build_all do
    crates = Keyword.get(Mix.Project.config(), :cargo_crates, [])
    results = Enum.map(crates, fn {name, opts} -> build_crate(name, opts) end)

    cond do
      Enum.any?(results, &match?({:error, _}, &1)) ->
        {:error, Enum.flat_map(results, &diagnostics/1)}

      Enum.member?(results, :ok) ->
        {:ok, []}

      true ->
        {:noop, []}
    end
  end

  @impl true
  def manifests do
    for {name, _opts} <- Keyword.get(Mix.Project.config(), :cargo_crates, []),
        do: manifest_path(name)
  end

  @impl true
  def clean do
    for {name, _opts} <- Keyword.get(Mix.Project.config(), :cargo_crates, []) do
      File.rm(manifest_path(name))
      File.rm(dest_path(name))
    end

    :ok
  end

  defp diagnostics({:error, diags}), do: diags
  defp diagnostics(_), do: []

  defp build_crate(name, opts) do
    profile = profile(opts)
    dest = dest_path(name)
    # Snapshot before building: an input edited while cargo runs is newer than the snapshot and
    # triggers the next build.
    inputs_mtime = newest_input()

    if up_to_date?(name, profile, dest, inputs_mtime) do
      :noop
    else
      with :ok <- cargo_build(name, opts, profile),
           :ok <- install(name, profile, dest) do
        write_manifest(name, profile, inputs_mtime, dest)
        :ok
      end
    end
  end

  defp profile(opts) do
    case System.get_env("SNAKEPIT_CARGO_PROFILE") do
      "debug" -> :debug
      "release" -> :release
      nil -> Keyword.get(opts, :profile, :release)
      "" -> Keyword.get(opts, :profile, :release)
      other -> Mix.raise("SNAKEPIT_CARGO_PROFILE must be \"debug\" or \"release\", got: #{other}")
    end
  end

  defp cargo_build(name, opts, profile) do
    package = Keyword.get(opts, :package, Atom.to_string(name))
    args = ["build", "-p", package] ++ if(profile == :release, do: ["--release"], else: [])

    case System.find_executable("cargo") do
      nil ->
        error(name, "cargo not found on PATH: install Rust (https://rustup.rs) to build the NIF")

      cargo ->
        Mix.shell().info("Compiling NIF crate #{package} (#{profile}) with cargo")

        {_, status} =
          System.cmd(cargo, args,
            cd: root(),
            into: IO.stream(:stdio, :line),
            stderr_to_stdout: true
          )

        if status == 0 do
          :ok
        else
          error(
            name,
            "`cargo #{Enum.join(args, " ")}` failed with exit status #{status} " <>
              "(see the cargo output above)"
          )
        end
    end
  end

  # Copy to a temporary name then rename, so a VM that is loading the library never sees a
  # half-written file.
  defp install(name, profile, dest) do
    src = Path.join([root(), "target", Atom.to_string(profile), "lib#{name}.so"])

    cond do
      not File.exists?(src) ->
        error(name, "cargo succeeded but #{src} does not exist")

      same_file?(src, dest) ->
        # Keep the installed file (and its mtime) when another env installed the same build.
        :ok

      true ->
        File.mkdir_p!(Path.dirname(dest))
        tmp = dest <> ".tmp"
        File.cp!(src, tmp)
        File.rename!(tmp, dest)
        :ok
    end
  end

  defp same_file?(src, dest) do
    with {:ok, %{size: size}} <- File.stat(src),
         {:ok, %{size: ^size}} <- File.stat(dest) do
      File.read!(src) == File.read!(dest)
    else
      _ -> false
    end
  end

  # Manifest content: "<profile> <newest input mtime at build start> <installed library stamp>".
  # priv/native is shared by all Mix envs, so the stamp (size + mtime of the installed library)
  # tells when another env installed a different build there.
  defp up_to_date?(name, profile, dest, inputs_mtime) do
    with {:ok, manifest} <- File.read(manifest_path(name)),
         [built_profile, built_mtime, stamp] <- String.split(manifest),
         true <- built_profile == Atom.to_string(profile),
         {built_mtime, ""} <- Integer.parse(built_mtime),
         true <- stamp == stamp(dest) do
      inputs_mtime <= built_mtime
    else
      _ -> false
    end
  end

  defp write_manifest(name, profile, inputs_mtime, dest) do
    path = manifest_path(name)
    File.mkdir_p!(Path.dirname(path))
    File.write!(path, "#{profile} #{inputs_mtime} #{stamp(dest)}\n")
  end

  defp stamp(path) do
    case File.stat(path, time: :posix) do
      {:ok, %{size: size, mtime: mtime}} -> "#{size}-#{mtime}"
      {:error, _} -> "missing"
    end
  end

  defp newest_input do
    @inputs
    |> Enum.map(&Path.join(root(), &1))
    |> Enum.map(&newest_mtime/1)
    |> Enum.max(fn -> 0 end)
  end

  # Walks a file or directory tree; `target/` build dirs are outputs, not inputs.
  defp newest_mtime(path) do
    case File.lstat(path, time: :posix) do
      {:ok, %{type: :directory, mtime: mtime}} ->
        if Path.basename(path) in ["target", "__pycache__"] do
          0
        else
          path
          |> File.ls!()
          |> Enum.map(&newest_mtime(Path.join(path, &1)))
          |> Enum.max(fn -> 0 end)
          |> max(mtime)
        end

      {:ok, %{mtime: mtime}} ->
        mtime

      {:error, _} ->
        0
    end
  end

  defp error(name, message) do
    Mix.shell().error("[cargo] #{message}")

    {:error,
     [
       %Mix.Task.Compiler.Diagnostic{
         compiler_name: "cargo",
         file: Path.join(root(), "Cargo.toml"),
         message: "#{name}: #{message}",
         position: nil,
         severity: :error
       }
     ]}
  end

  defp root, do: Path.dirname(Mix.Project.project_file())
  defp dest_path(name), do: Path.join([root(), "priv", "native", "lib#{name}.so"])
  defp manifest_path(name), do: Path.join(Mix.Project.manifest_path(), "#{@manifest}.#{name}")
end
