defmodule Snakepit.Error.PythonException do
  @moduledoc """
  A Python exception raised by a tool, for Python types without a dedicated struct.

  Known types get their own exception module with the same fields:
  #{Enum.map_join(~w(ValueError KeyError IndexError TypeError AttributeError ImportError RuntimeError NotImplementedError FileNotFoundError PermissionError ZeroDivisionError), ", ", &"`Snakepit.Error.#{&1}`")}.

  Fields: `message` (Python `str(exc)`), `python_type` (class name), `python_traceback` (formatted
  traceback text), `stacktrace` (list of formatted lines), `context` (map from the worker, e.g.
  `"tool_name"`).
  """

  defexception message: "",
               context: %{},
               stacktrace: [],
               python_type: "Exception",
               python_traceback: nil

  @type t :: %{
          __struct__: module(),
          __exception__: true,
          message: String.t(),
          context: map(),
          stacktrace: [String.t()],
          python_type: String.t(),
          python_traceback: String.t() | nil
        }

  @mapped %{
    "ValueError" => Snakepit.Error.ValueError,
    "KeyError" => Snakepit.Error.KeyError,
    "IndexError" => Snakepit.Error.IndexError,
    "TypeError" => Snakepit.Error.TypeError,
    "AttributeError" => Snakepit.Error.AttributeError,
    "ImportError" => Snakepit.Error.ImportError,
    "RuntimeError" => Snakepit.Error.RuntimeError,
    "NotImplementedError" => Snakepit.Error.NotImplementedError,
    "FileNotFoundError" => Snakepit.Error.FileNotFoundError,
    "PermissionError" => Snakepit.Error.PermissionError,
    "ZeroDivisionError" => Snakepit.Error.ZeroDivisionError
  }

  @doc """
  Builds the exception struct for a Python error payload (keys `"type"`, `"message"`,
  `"traceback"`, `"stacktrace"`, `"context"`) and emits
  `[:snakepit, :python, :exception, :mapped | :unmapped]`.

      iex> e = Snakepit.Error.PythonException.from_payload(%{"type" => "KeyError", "message" => "'a'"})
      iex> {e.__struct__, e.message}
      {Snakepit.Error.KeyError, "'a'"}
  """
  @spec from_payload(map()) :: t()
  def from_payload(payload) when is_map(payload) do
    type = string_or(payload["type"], "Exception")
    context = if is_map(payload["context"]), do: payload["context"], else: %{}
    {module, kind} = module_for(type)

    Snakepit.Telemetry.execute([:snakepit, :python, :exception, kind], %{}, %{
      python_type: type,
      library: context["library"],
      function: context["function"]
    })

    struct(module,
      message: string_or(payload["message"], ""),
      context: context,
      stacktrace: if(is_list(payload["stacktrace"]), do: payload["stacktrace"], else: []),
      python_type: type,
      python_traceback: string_or(payload["traceback"], nil)
    )
  end

  @doc "The exception module used for a Python type name."
  @spec module_for(String.t()) :: {module(), :mapped | :unmapped}
  def module_for(type) do
    case Map.fetch(@mapped, type) do
      {:ok, module} -> {module, :mapped}
      :error -> {__MODULE__, :unmapped}
    end
  end

  defp string_or(value, _default) when is_binary(value), do: value
  defp string_or(_value, default), do: default
end

for name <- ~w(ValueError KeyError IndexError TypeError AttributeError ImportError RuntimeError
               NotImplementedError FileNotFoundError PermissionError ZeroDivisionError) do
  defmodule Module.concat(Snakepit.Error, name) do
    @moduledoc "Python `#{name}` raised by a tool (fields as `Snakepit.Error.PythonException`)."
    defexception message: "",
                 context: %{},
                 stacktrace: [],
                 python_type: name,
                 python_traceback: nil
  end
end
