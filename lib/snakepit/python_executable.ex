defmodule Snakepit.PythonExecutable do
  @moduledoc """
  Finds the Python interpreter that runs the workers. First hit wins:

  1. the pool's `python_executable`, the global `:python_executable`, or env `SNAKEPIT_PYTHON`
     (must exist and be executable, else `{:error, {:invalid_python_executable, path}}`);
  2. `.venv/bin/python3` of the current project, then `../.venv/bin/python3`;
  3. `$VIRTUAL_ENV/bin/python3`;
  4. `python3`, then `python`, on `PATH`.
  """

  @doc """
  Resolves the interpreter. `explicit` is a configured path (or nil).

      iex> {:ok, path} = Snakepit.PythonExecutable.resolve(nil)
      iex> File.exists?(path)
      true
  """
  @spec resolve(String.t() | nil) :: {:ok, String.t()} | {:error, term()}
  def resolve(explicit \\ nil) do
    explicit = explicit || Application.get_env(:snakepit, :python_executable)

    case explicit || non_empty(System.get_env("SNAKEPIT_PYTHON")) do
      nil -> discover()
      path -> validate(path)
    end
  end

  defp discover do
    venv = non_empty(System.get_env("VIRTUAL_ENV"))

    candidates =
      [
        Path.expand(".venv/bin/python3"),
        Path.expand("../.venv/bin/python3"),
        venv && Path.join(venv, "bin/python3")
      ]
      |> Enum.reject(&is_nil/1)

    case Enum.find(candidates, &executable?/1) do
      nil -> path_lookup()
      path -> {:ok, path}
    end
  end

  defp path_lookup do
    case System.find_executable("python3") || System.find_executable("python") do
      nil ->
        {:error,
         {:python_not_found,
          "no Python interpreter found: set :python_executable or SNAKEPIT_PYTHON, " <>
            "or create .venv in the project"}}

      path ->
        {:ok, path}
    end
  end

  defp validate(path) do
    path = Path.expand(path)
    if executable?(path), do: {:ok, path}, else: {:error, {:invalid_python_executable, path}}
  end

  defp executable?(path) do
    case File.stat(path) do
      {:ok, %{type: :regular, mode: mode}} -> Bitwise.band(mode, 0o111) != 0
      _ -> false
    end
  end

  defp non_empty(nil), do: nil
  defp non_empty(""), do: nil
  defp non_empty(value), do: value
end
