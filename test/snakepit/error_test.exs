defmodule Snakepit.ErrorTest do
  use ExUnit.Case, async: true

  alias Snakepit.Error

  doctest Snakepit.Error
  doctest Snakepit.Error.PythonException

  @meta %{command: "cmd", pool: Snakepit.Pool, pool_name: :default}

  describe "from_reason/2 pool reasons" do
    for {reason, category, message} <- [
          {:queue_timeout, :timeout, "Request timed out in queue"},
          {:pool_saturated, :pool, "Pool is saturated"},
          {:worker_busy, :pool, "Preferred worker is busy"},
          {:session_worker_unavailable, :pool, "Session worker unavailable"},
          {:no_workers_available, :pool, "No workers available"},
          {:pool_closed, :pool, "Pool is closed"},
          {:pool_not_initialized, :pool, "Pool not initialized"}
        ] do
      test "{:pool, #{inspect(reason)}}" do
        error = Error.from_reason({:pool, unquote(reason)}, @meta)
        assert %Error{category: unquote(category), message: unquote(message)} = error
        assert error.details.reason == unquote(reason)
        assert error.details.command == "cmd"
        assert error.details.pool_name == :default
      end
    end

    test "bare atoms map the same way" do
      assert %Error{category: :pool, message: "Preferred worker is busy"} =
               Error.from_reason(:worker_busy)
    end
  end

  test "pool_not_found carries the pool name" do
    assert %Error{category: :pool, message: "Pool not found", details: details} =
             Error.from_reason({:pool_not_found, :nope}, @meta)

    assert details.reason == :pool_not_found
    assert details.pool_name == :nope
  end

  test "worker exit" do
    assert %Error{category: :worker, message: "Worker process exited", details: details} =
             Error.from_reason({:worker_exit, "default_worker_1_9", {:exit_status, 139}}, @meta)

    assert details.reason == :worker_exit
    assert details.worker_id == "default_worker_1_9"
    assert details.exit_reason == {:exit_status, 139}
  end

  describe "Python errors" do
    @payload %{
      "type" => "ValueError",
      "message" => "bad value",
      "traceback" => "Traceback (most recent call last):\n  ...\nValueError: bad value\n",
      "stacktrace" => ["line 1", "line 2"],
      "context" => %{"tool_name" => "cmd"}
    }

    test "wrap the translated exception (v0.13 shape)" do
      error = Error.from_reason({:python, @payload}, @meta)
      assert %Error{category: :worker, message: "Request failed"} = error
      assert %Snakepit.Error.ValueError{} = exception = error.details.reason
      assert exception.message == "bad value"
      assert exception.python_type == "ValueError"
      assert exception.python_traceback =~ "Traceback"
      assert exception.stacktrace == ["line 1", "line 2"]
      assert exception.context == %{"tool_name" => "cmd"}
      assert error.details.exception_type == "ValueError"
      assert error.details.command == "cmd"
      assert error.python_traceback == @payload["traceback"]
    end

    test "every mapped type has its struct; others are PythonException" do
      for type <- ~w(ValueError KeyError IndexError TypeError AttributeError ImportError
                     RuntimeError NotImplementedError FileNotFoundError PermissionError
                     ZeroDivisionError) do
        error = Error.from_reason({:python, %{"type" => type, "message" => "m"}}, @meta)
        assert error.details.reason.__struct__ == Module.concat(Snakepit.Error, type)
        assert error.details.reason.python_type == type
        assert Exception.message(error.details.reason) == "m"
      end

      error = Error.from_reason({:python, %{"type" => "OSError", "message" => "m"}}, @meta)
      assert %Snakepit.Error.PythonException{python_type: "OSError"} = error.details.reason
    end

    test "a JSON Python payload inside a gRPC INTERNAL status is a Python error" do
      message = ~s({"type": "KeyError", "message": "'k'", "traceback": "tb"})
      error = Error.from_reason({:grpc, :internal, message}, @meta)
      assert %Snakepit.Error.KeyError{message: "'k'"} = error.details.reason
    end

    test "emits [:snakepit, :python, :exception, :mapped]" do
      test_pid = self()
      id = {__MODULE__, make_ref()}

      Snakepit.Telemetry.attach_many(
        id,
        [[:snakepit, :python, :exception, :mapped], [:snakepit, :python, :exception, :unmapped]],
        fn event, _m, meta, _ -> send(test_pid, {event, meta.python_type}) end,
        nil
      )

      on_exit(fn -> Snakepit.Telemetry.detach(id) end)
      Error.from_reason({:python, %{"type" => "TypeError"}}, @meta)
      Error.from_reason({:python, %{"type" => "Boom"}}, @meta)
      assert_received {[:snakepit, :python, :exception, :mapped], "TypeError"}
      assert_received {[:snakepit, :python, :exception, :unmapped], "Boom"}
    end
  end

  describe "gRPC errors" do
    test "deadline exceeded is a worker timeout" do
      error = Error.from_reason({:grpc, :deadline_exceeded, "deadline"}, @meta)
      assert %Error{category: :timeout, message: "Worker execution timed out"} = error
      assert error.details.reason == :worker_timeout
      assert error.grpc_status == :deadline_exceeded
    end

    test "other codes are pool request failures with the status" do
      error = Error.from_reason({:grpc, :unavailable, "connection refused"}, @meta)
      assert %Error{category: :pool, message: "Pool request failed"} = error
      assert error.details.reason == :unavailable
      assert error.details.grpc_message == "connection refused"
      assert error.grpc_status == :unavailable
    end
  end

  test "invalid parameters and other tuples are pool request failures" do
    error = Error.from_reason({:invalid_parameter, "a.b[2]", "invalid UTF-8"}, @meta)
    assert %Error{category: :pool, message: "Pool request failed"} = error
    assert error.details.reason == {:invalid_parameter, "a.b[2]", "invalid UTF-8"}
  end

  test "unknown terms are worker request failures; errors pass through" do
    assert %Error{category: :worker, message: "Request failed", details: %{reason: "boom"}} =
             Error.from_reason("boom", @meta)

    error = Error.pool_error("x")
    assert Error.from_reason(error, @meta) == error
  end

  test "normalize_public_result/2" do
    assert Error.normalize_public_result({:ok, 1}, @meta) == {:ok, 1}

    assert {:error, %Error{category: :timeout}} =
             Error.normalize_public_result({:error, {:pool, :queue_timeout}}, @meta)
  end

  describe "constructors" do
    test "set category, message and details" do
      assert %Error{category: :worker, message: "w", details: %{a: 1}} =
               Error.worker_error("w", %{a: 1})

      assert %Error{category: :timeout} = Error.timeout_error("t")
      assert %Error{category: :pool} = Error.pool_error("p")
      assert %Error{category: :validation} = Error.validation_error("v")

      assert %Error{category: :grpc_error, grpc_status: :unavailable} =
               Error.grpc_error(:unavailable, "g")

      assert %Error{category: :python_error, message: "ValueError: bad", python_traceback: "tb"} =
               error = Error.python_error("ValueError", "bad", "tb")

      assert error.details.exception_type == "ValueError"
    end
  end

  describe "String.Chars" do
    test "category and message only" do
      assert to_string(Error.pool_error("Pool is saturated")) == "[pool] Pool is saturated"
    end

    test "details, gRPC status and traceback" do
      error = %{Error.grpc_error(:internal, "boom", %{a: 1}) | python_traceback: "Traceback: x"}
      text = to_string(error)
      assert text =~ "[grpc_error] boom"
      assert text =~ "\nDetails: %{a: 1}"
      assert text =~ "\ngRPC Status: internal"
      assert text =~ "\n\nPython Traceback:\nTraceback: x"
    end
  end
end
