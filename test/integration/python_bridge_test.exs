defmodule Snakepit.Integration.PythonBridgeTest do
  # Issue #4 through the pool: adapters written only against the documented Python API
  # (test/fixtures/python: ContractAdapter via BridgeAdapter, upstream-style ExecuteToolAdapter,
  # the showcase) run unchanged behind Snakepit.execute/execute_stream. Values, errors and
  # failures of the codec must never cost the worker: every test checks that the one worker
  # of :bridge is still the same OS process afterwards.
  use ExUnit.Case, async: false

  import Snakepit.TestSupport

  alias Snakepit.Error

  @bridge :bridge
  @exec :exec

  setup_all do
    dir = Path.join(System.tmp_dir!(), "snakepit_bridge_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)

    start_snakepit!(
      pools: [
        %{name: :default, pool_size: 1},
        %{
          name: @bridge,
          pool_size: 1,
          adapter_args: ["--adapter", "snakepit_bridge_adapters.BridgeAdapter"],
          adapter_env: fixture_env() ++ [{"SNAKEPIT_TEST_MARKER_DIR", dir}]
        },
        %{
          name: @exec,
          pool_size: 1,
          adapter_args: fixture_adapter("ExecuteToolAdapter"),
          adapter_env: fixture_env()
        }
      ]
    )

    await_workers!(3)
    [worker] = Snakepit.list_workers(@bridge)
    %{dir: dir, worker: worker, os_pid: Snakepit.Worker.os_pid(worker)}
  end

  setup context do
    # Whatever the previous test did, the :bridge worker is the one started in setup_all.
    assert Snakepit.list_workers(@bridge) == [context.worker]
    assert {:ok, context.os_pid} == bridge("pid")
    :ok
  end

  defp bridge(command, args \\ %{}, opts \\ []),
    do: Snakepit.execute(command, args, Keyword.put(opts, :pool_name, @bridge))

  defp assert_same_worker(%{worker: worker, os_pid: os_pid}) do
    assert {:ok, ^os_pid} = bridge("pid")
    assert Snakepit.list_workers(@bridge) == [worker]
    assert Snakepit.OsProcess.alive?(os_pid)
  end

  defp stream(command, args, opts, callback \\ nil) do
    test_pid = self()
    callback = callback || fn chunk -> send(test_pid, {:chunk, chunk}) end
    result = Snakepit.execute_stream(command, args, callback, opts)
    {result, collect_chunks()}
  end

  defp collect_chunks(acc \\ []) do
    receive do
      {:chunk, chunk} -> collect_chunks([chunk | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end

  describe "adapters written against the documented API" do
    test "decorated tools; Python sees the caller's session id", ctx do
      assert {:ok, "Hello, Ada!"} = bridge("greet", %{name: "Ada"})

      assert {:ok, %{"session_id" => "s1", "pid" => pid}} =
               Snakepit.execute_in_session("s1", "whoami", %{}, pool_name: @bridge)

      assert pid == ctx.os_pid

      # Session-less calls see the serving worker's id (upstream always sent that).
      assert {:ok, %{"session_id" => worker}} = bridge("whoami")
      assert worker == ctx.worker
    end

    test "a stateful tool keeps objects per caller session", ctx do
      assert {:ok, %{"stored" => "model", "session_id" => "a"}} =
               Snakepit.execute_in_session("a", "store_object", %{key: "model", value: [1, 2]},
                 pool_name: @bridge
               )

      assert {:ok, [1, 2]} =
               Snakepit.execute_in_session("a", "fetch_object", %{key: "model"},
                 pool_name: @bridge
               )

      # Same worker, other session: not found.
      assert {:error, %Error{details: %{reason: %Snakepit.Error.KeyError{message: message}}}} =
               Snakepit.execute_in_session("b", "fetch_object", %{key: "model"},
                 pool_name: @bridge
               )

      assert message =~ "Unknown reference"
      assert_same_worker(ctx)
    end

    test "an execute_tool-style adapter gets tool_name, arguments and context" do
      assert {:ok, 5} = Snakepit.execute("add", %{a: 2, b: 3}, pool_name: @exec)

      assert {:ok, %{"tool" => "echo", "arguments" => %{"x" => [1, %{"y" => nil}]}}} =
               Snakepit.execute("echo", %{x: [1, %{y: nil}]}, pool_name: @exec)

      assert {:ok, %{"session_id" => "s1", "metadata" => %{"correlation_id" => "corr-1"}}} =
               Snakepit.execute_in_session("s1", "session", %{},
                 pool_name: @exec,
                 correlation_id: "corr-1"
               )

      assert {:error, %Error{details: %{reason: %Snakepit.Error.ValueError{message: message}}}} =
               Snakepit.execute("nope", %{}, pool_name: @exec)

      assert message == "Unknown tool: nope"

      assert {:ok, chunks} = stream("count", %{n: 2}, pool_name: @exec)

      assert chunks == [
               %{"i" => 1, "is_final" => false},
               %{"i" => 2, "is_final" => false},
               %{"is_final" => true}
             ]
    end

    test "the default (showcase) adapter: ping, echo, add, sleep_task, get_worker_info, stream_progress" do
      assert {:ok, %{"message" => "pong"}} = Snakepit.execute("ping", %{})
      assert {:ok, %{"echoed" => %{"k" => [1, "ü"]}}} = Snakepit.execute("echo", %{k: [1, "ü"]})
      assert {:ok, 4} = Snakepit.execute("add", %{a: 2, b: 2})

      assert {:ok, %{"task_number" => 7, "slept_ms" => 20}} =
               Snakepit.execute("sleep_task", %{duration_ms: 20, task_number: 7})

      [default_worker] = Snakepit.list_workers(:default)

      assert {:ok, %{"worker_pid" => pid, "call_number" => 3, "session_id" => "info"}} =
               Snakepit.execute_in_session("info", "get_worker_info", %{call_number: 3})

      assert pid == Snakepit.Worker.os_pid(default_worker)

      assert {:ok, chunks} = stream("stream_progress", %{steps: 3, delay_ms: 1}, [])

      assert Enum.map(chunks, & &1["step"]) == [1, 2, 3]
      assert List.last(chunks)["is_final"] == true
    end
  end

  describe "values" do
    test "binary_parameters arrive in Python as bytes; bytes results come back raw", ctx do
      blob = <<0, 255, 1, 2, 128, 254>> <> :binary.copy(<<0xC3>>, 10)

      assert {:ok, %{"blob" => blob_info, "text" => %{"type" => "str"}}} =
               bridge("describe", %{text: "x"}, binary_parameters: %{"blob" => blob})

      assert blob_info == %{
               "type" => "bytes",
               "len" => byte_size(blob),
               "hex" => Base.encode16(blob, case: :lower)
             }

      # 1 MiB of arbitrary bytes, both ways.
      big = :crypto.strong_rand_bytes(1_048_576)

      assert {:ok, {:binary, ^big}} = bridge("echo_bytes", %{}, binary_parameters: %{data: big})

      assert {:ok, {:binary, <<0, 255>>, %{"size" => 2}}} =
               bridge("bytes_with_meta", %{}, binary_parameters: %{data: <<0, 255>>})

      # bytes nested in a result: a structured error naming the field.
      assert {:error, %Error{details: %{reason: %Snakepit.Error.TypeError{message: message}}}} =
               bridge("nested_bytes")

      assert message =~ ~s(result["a"][1]: bytes cannot be encoded as JSON)
      assert_same_worker(ctx)
    end

    test "NaN, ±Infinity and integers beyond 64 bits, both ways", ctx do
      value = [:nan, :infinity, :neg_infinity, Integer.pow(2, 64) + 1, -Integer.pow(2, 100)]
      assert {:ok, ^value} = bridge("echo", %{value: value})

      assert {:ok, specials} = bridge("specials")

      assert specials == %{
               "nan" => :nan,
               "inf" => :infinity,
               "ninf" => :neg_infinity,
               "nested" => [:nan, %{"x" => :neg_infinity}],
               "big" => Integer.pow(2, 100),
               "neg_big" => -Integer.pow(2, 80),
               "neg_zero" => -0.0
             }

      # Beyond Python's int/str digit limit: structured errors naming the field.
      assert {:error, %Error{details: %{reason: %Snakepit.Error.ValueError{message: message}}}} =
               bridge("echo", %{value: Integer.pow(10, 5000)})

      assert message =~ "Invalid parameter 'value'"

      assert {:error, %Error{details: %{reason: %Snakepit.Error.ValueError{message: message}}}} =
               bridge("huge_int", %{digits: 5000})

      assert message =~ ~s(result["n"]: integer with more than)
      assert_same_worker(ctx)
    end

    test "odd strings: invalid UTF-8 from Elixir, lone surrogates from Python", ctx do
      assert {:error, %Error{category: :pool, details: %{reason: reason}}} =
               bridge("echo", %{value: %{"a" => ["ok", <<0xFF, 0xFE>>]}})

      assert {:invalid_parameter, "value.a[1]", "invalid UTF-8 in binary at byte 0" <> _} = reason

      assert {:error, %Error{details: %{reason: {:invalid_parameter, "value", message}}}} =
               bridge("echo", %{value: <<"caf", 0xC3>>})

      assert message =~ "invalid UTF-8"

      # NUL, noncharacters and astral characters are valid: they round-trip.
      odd = "a\u0000b\uFFFF\u{10FFFF}🐍"
      assert {:ok, ^odd} = bridge("echo", %{value: odd})

      for where <- ["value", "key"] do
        assert {:error, %Error{category: :worker, details: %{reason: %{message: message}}}} =
                 bridge("bad_string", %{where: where})

        assert message =~ "lone surrogate", message
        assert message =~ "result", message
      end

      # In an exception message: the error still arrives, the surrogate escaped.
      assert {:error, %Error{details: %{reason: %Snakepit.Error.ValueError{message: message}}}} =
               bridge("bad_string", %{where: "error"})

      assert message == "bad text \\ud800 in an exception"

      # In a stream chunk: the stream fails with a structured error after the good chunk.
      {result, chunks} = stream("bad_chunks", %{}, pool_name: @bridge)
      assert [%{"ok" => 1}] = chunks

      assert {:error, %Error{details: %{reason: %Snakepit.Error.ValueError{message: msg}}}} =
               result

      assert msg =~ "chunk[2]"

      assert {:error, %Error{details: %{reason: %Snakepit.Error.TypeError{message: message}}}} =
               bridge("unserializable")

      assert message =~ ~s(result["obj"][0]: object of type object is not JSON serializable)
      assert_same_worker(ctx)
    end

    test "Elixir structs: dates and times as ISO 8601 strings, MapSet as a list", ctx do
      {:ok, datetime, 0} = DateTime.from_iso8601("2024-05-06T07:08:09.123Z")

      args = %{
        "date" => ~D[2024-01-02],
        "time" => ~T[10:11:12],
        "naive" => ~N[2024-01-02 03:04:05],
        "datetime" => datetime,
        "set" => MapSet.new([1]),
        "nested" => [%{"when" => ~D[1999-12-31]}]
      }

      assert {:ok, echoed} = bridge("echo", %{value: args})

      assert echoed == %{
               "date" => "2024-01-02",
               "time" => "10:11:12",
               "naive" => "2024-01-02T03:04:05",
               "datetime" => "2024-05-06T07:08:09.123Z",
               "set" => [1],
               "nested" => [%{"when" => "1999-12-31"}]
             }

      assert {:ok, %{"d" => %{"type" => "str"}}} = bridge("describe", %{d: ~D[2024-01-02]})

      # Streams convert the same way (ExecuteToolAdapter's count takes any arguments).
      assert {:ok, [%{"i" => 1}, %{"is_final" => true}]} =
               stream("count", %{n: 1, since: ~D[2024-01-02]}, pool_name: @exec)

      # Other structs are refused, naming the path.
      assert {:error, %Error{category: :pool, details: %{reason: reason}}} =
               bridge("echo", %{value: %{"uri" => URI.parse("http://x"), "d" => ~D[2024-01-02]}})

      assert {:invalid_parameter, "value.uri", "cannot encode struct Elixir.URI" <> _} = reason
      assert_same_worker(ctx)
    end
  end

  describe "Python exceptions" do
    test "become {:error, %Snakepit.Error{}} with type, message and traceback (v0.13 shape)",
         ctx do
      assert {:error, %Error{} = error} =
               Snakepit.execute_in_session("s9", "fail", %{kind: "runtime"}, pool_name: @bridge)

      assert %Error{category: :worker, message: "Request failed"} = error
      assert error.details.command == "fail"
      assert error.details.pool_name == @bridge
      assert error.details.exception_type == "RuntimeError"

      assert %Snakepit.Error.RuntimeError{
               message: "runtime failure requested",
               python_type: "RuntimeError",
               python_traceback: traceback,
               context: %{"tool_name" => "fail", "session_id" => "s9"}
             } = error.details.reason

      assert traceback =~ "Traceback (most recent call last):"
      assert traceback =~ ~r/snakepit_test_adapters\.py", line \d+, in fail/
      assert traceback =~ "RuntimeError: runtime failure requested"
      assert error.python_traceback == traceback

      assert {:error, %Error{details: %{reason: %Snakepit.Error.KeyError{}}}} =
               bridge("fail", %{kind: "key"})

      assert {:error, %Error{details: %{reason: %Snakepit.Error.TypeError{}}}} =
               bridge("greet", %{})

      assert_same_worker(ctx)
    end
  end

  describe "streaming tools" do
    test "a sync and an async generator stream their items as chunks", ctx do
      for tool <- ["count_to", "async_count_to"] do
        {result, chunks} = stream(tool, %{n: 3}, pool_name: @bridge)
        assert result == :ok
        assert Enum.map(chunks, & &1["count"]) == [1, 2, 3, nil], tool
        assert Enum.map(chunks, & &1["is_final"]) == [false, false, false, true], tool
      end

      assert_same_worker(ctx)
    end

    test "the consumer halting stops the generator (sync and async)", ctx do
      for {tool, marker} <- [{"count_to", "gen_closed"}, {"async_count_to", "async_closed"}] do
        n = 1_000_000 + System.unique_integer([:positive])

        {result, chunks} =
          stream(tool, %{n: n, delay_ms: 5}, [pool_name: @bridge], fn chunk ->
            if chunk["count"] == 3, do: :halt, else: :ok
          end)

        assert result == :ok
        assert chunks == []

        assert [_] =
                 eventually(fn ->
                   case Path.wildcard("#{ctx.dir}/#{marker}_#{ctx.os_pid}_#{n}") do
                     [] -> nil
                     found -> found
                   end
                 end),
               "#{tool} was not closed"
      end

      assert eventually(fn -> Snakepit.get_stats(@bridge).busy == 0 end)
      assert_same_worker(ctx)
    end
  end

  describe "worker process" do
    test "BLAS/OpenMP thread pools are capped at 1 unless configured" do
      names = ~w(OMP_NUM_THREADS OPENBLAS_NUM_THREADS MKL_NUM_THREADS)
      assert {:ok, env} = bridge("env", %{names: names})
      assert env == Map.new(names, &{&1, System.get_env(&1) || "1"})
    end
  end
end
