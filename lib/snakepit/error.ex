defmodule Snakepit.Error do
  @moduledoc """
  The one error shape of the public API: every failing call returns
  `{:error, %Snakepit.Error{}}`.

  | Field | Meaning |
  |---|---|
  | `category` | `:worker`, `:timeout`, `:python_error`, `:grpc_error`, `:validation` or `:pool` |
  | `message` | human readable summary |
  | `details` | map; `details.reason` holds the internal reason when there is one |
  | `python_traceback` | Python traceback text when the error came from Python |
  | `grpc_status` | gRPC status code atom (e.g. `:unavailable`) for transport errors |

  `from_reason/2` maps the reason terms produced by the NIF (docs/ARCHITECTURE.md) to this struct
  using the same table as upstream Snakepit v0.13:

      iex> e = Snakepit.Error.from_reason({:pool, :queue_timeout}, %{command: "ping"})
      iex> {e.category, e.message, e.details.reason}
      {:timeout, "Request timed out in queue", :queue_timeout}

  Python exceptions are translated into the structs of `Snakepit.Error.PythonException` (such as
  `Snakepit.Error.ValueError`) and wrapped like upstream v0.13 does:
  `%Snakepit.Error{category: :worker, message: "Request failed", details: %{reason: %Snakepit.Error.ValueError{}, exception_type: "ValueError"}}`.
  """

  alias Snakepit.Error.PythonException

  @enforce_keys [:category, :message]
  defstruct [:category, :message, details: %{}, python_traceback: nil, grpc_status: nil]

  @type category :: :worker | :timeout | :python_error | :grpc_error | :validation | :pool

  @type t :: %__MODULE__{
          category: category(),
          message: String.t(),
          details: map(),
          python_traceback: String.t() | nil,
          grpc_status: atom() | nil
        }

  @pool_messages %{
    pool_not_found: "Pool not found",
    pool_not_initialized: "Pool not initialized",
    pool_saturated: "Pool is saturated",
    worker_busy: "Preferred worker is busy",
    session_worker_unavailable: "Session worker unavailable",
    no_workers_available: "No workers available",
    pool_closed: "Pool is closed"
  }

  # -- constructors ------------------------------------------------------------------------------

  @doc "A `:worker` error."
  @spec worker_error(String.t(), map()) :: t()
  def worker_error(message, details \\ %{}), do: new(:worker, message, details)

  @doc "A `:timeout` error."
  @spec timeout_error(String.t(), map()) :: t()
  def timeout_error(message, details \\ %{}), do: new(:timeout, message, details)

  @doc "A `:pool` error."
  @spec pool_error(String.t(), map()) :: t()
  def pool_error(message, details \\ %{}), do: new(:pool, message, details)

  @doc "A `:validation` error."
  @spec validation_error(String.t(), map()) :: t()
  def validation_error(message, details \\ %{}), do: new(:validation, message, details)

  @doc "A `:grpc_error` carrying the gRPC status atom."
  @spec grpc_error(atom(), String.t(), map()) :: t()
  def grpc_error(status, message, details \\ %{}) do
    %{new(:grpc_error, message, details) | grpc_status: status}
  end

  @doc """
  A `:python_error` with message `"<type>: <message>"` and `details.exception_type`.

      iex> Snakepit.Error.python_error("KeyError", "'x'", nil).message
      "KeyError: 'x'"
  """
  @spec python_error(String.t(), String.t(), String.t() | nil, map()) :: t()
  def python_error(type, message, traceback, details \\ %{}) do
    %{
      new(:python_error, "#{type}: #{message}", Map.put(details, :exception_type, type))
      | python_traceback: traceback
    }
  end

  defp new(category, message, details) when is_map(details) do
    %__MODULE__{category: category, message: message, details: details}
  end

  # -- normalization -----------------------------------------------------------------------------

  @doc """
  Maps an internal reason to a `%Snakepit.Error{}`. `meta` (e.g. `%{command:, pool_name:}`) is
  merged into `details`.

  | Reason | category | message |
  |---|---|---|
  | `{:pool, :queue_timeout}` | `:timeout` | "Request timed out in queue" |
  | `{:pool, atom}` / `atom` with a known pool reason | `:pool` | e.g. "Pool is saturated" |
  | `{:pool_not_found, name}` | `:pool` | "Pool not found" (`details.pool_name`) |
  | `{:python, payload}` | `:worker` | "Request failed" (`details.reason` is an exception struct) |
  | `{:grpc, :deadline_exceeded, _}` | `:timeout` | "Worker execution timed out" |
  | `{:grpc, code, message}` | `:pool` | "Pool request failed" (`grpc_status: code`) |
  | `{:worker_exit, id, reason}` | `:worker` | "Worker process exited" |
  | other atoms and tuples | `:pool` | "Pool request failed" |
  | anything else | `:worker` | "Request failed" |
  """
  @spec from_reason(term(), map()) :: t()
  def from_reason(reason, meta \\ %{})

  def from_reason(%__MODULE__{} = error, _meta), do: error

  def from_reason({:pool, reason}, meta) when is_atom(reason), do: from_reason(reason, meta)

  def from_reason(:queue_timeout, meta) do
    timeout_error("Request timed out in queue", Map.put(meta, :reason, :queue_timeout))
  end

  def from_reason(:worker_timeout, meta) do
    timeout_error("Worker execution timed out", Map.put(meta, :reason, :worker_timeout))
  end

  def from_reason({:pool_not_found, name}, meta) do
    pool_error("Pool not found", Map.merge(meta, %{reason: :pool_not_found, pool_name: name}))
  end

  def from_reason({:python, payload}, meta) when is_map(payload) do
    exception = PythonException.from_payload(payload)

    details = Map.merge(meta, %{reason: exception, exception_type: exception.python_type})

    %{worker_error("Request failed", details) | python_traceback: exception.python_traceback}
  end

  def from_reason({:grpc, :deadline_exceeded, message}, meta) do
    details = Map.merge(meta, %{reason: :worker_timeout, grpc_message: message})
    %{timeout_error("Worker execution timed out", details) | grpc_status: :deadline_exceeded}
  end

  def from_reason({:grpc, code, message}, meta) when is_atom(code) do
    # Streaming failures of a tool arrive as INTERNAL with the Python error JSON as message.
    case python_payload(message) do
      {:ok, payload} ->
        from_reason({:python, payload}, meta)

      :error ->
        details = Map.merge(meta, %{reason: code, grpc_message: message})
        %{pool_error("Pool request failed", details) | grpc_status: code}
    end
  end

  def from_reason({:worker_exit, worker_id, exit_reason}, meta) do
    worker_error(
      "Worker process exited",
      Map.merge(meta, %{reason: :worker_exit, worker_id: worker_id, exit_reason: exit_reason})
    )
  end

  def from_reason({:worker_exit, exit_reason}, meta) do
    worker_error(
      "Worker process exited",
      Map.merge(meta, %{reason: :worker_exit, exit_reason: exit_reason})
    )
  end

  def from_reason(reason, meta) when is_map_key(@pool_messages, reason) do
    pool_error(Map.fetch!(@pool_messages, reason), Map.put(meta, :reason, reason))
  end

  def from_reason(reason, meta) when is_atom(reason) or is_tuple(reason) do
    pool_error("Pool request failed", Map.put(meta, :reason, reason))
  end

  def from_reason(reason, meta) do
    worker_error("Request failed", Map.put(meta, :reason, reason))
  end

  @doc "Normalizes `{:error, reason}` results with `from_reason/2`; other results pass through."
  @spec normalize_public_result(term(), map()) :: term()
  def normalize_public_result({:error, reason}, meta), do: {:error, from_reason(reason, meta)}
  def normalize_public_result(result, _meta), do: result

  @doc "Same as `from_reason/2` (upstream name)."
  @spec normalize_public_error(term(), map()) :: t()
  def normalize_public_error(reason, meta), do: from_reason(reason, meta)

  defp python_payload("{" <> _ = message) do
    case Snakepit.JSON.decode(message) do
      {:ok, %{"type" => type} = payload} when is_binary(type) -> {:ok, payload}
      _ -> :error
    end
  end

  defp python_payload(_), do: :error
end

defimpl String.Chars, for: Snakepit.Error do
  def to_string(%Snakepit.Error{} = error) do
    IO.iodata_to_binary([
      "[#{error.category}] #{error.message}",
      if(map_size(error.details) > 0, do: "\nDetails: #{inspect(error.details)}", else: []),
      if(error.grpc_status, do: "\ngRPC Status: #{error.grpc_status}", else: []),
      if(error.python_traceback, do: "\n\nPython Traceback:\n#{error.python_traceback}", else: [])
    ])
  end
end
