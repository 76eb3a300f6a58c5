defmodule Snakepit.Integration.ExecuteTest do
  # Real Python workers: the showcase adapter in :default, the contract fixture in :contract.
  use ExUnit.Case, async: false

  import Snakepit.TestSupport

  alias Snakepit.Error

  setup_all do
    start_snakepit!(
      pools: [
        %{name: :default, pool_size: 2},
        %{
          name: :contract,
          pool_size: 2,
          adapter_args: fixture_adapter("ContractAdapter"),
          adapter_env: fixture_env()
        }
      ]
    )

    # start_snakepit! waits for one worker per pool; the introspection tests count all four.
    await_workers!(4)
  end

  describe "execute/3" do
    test "ping" do
      assert {:ok, %{"message" => "pong", "timestamp" => timestamp}} =
               Snakepit.execute("ping", %{})

      assert is_binary(timestamp)
    end

    test "echo round-trips nested maps, lists, unicode, big integers, floats, booleans, nil" do
      args = %{
        "nested" => %{"list" => [1, [2, 3], %{"k" => "v"}], "map" => %{"deep" => %{"x" => [nil]}}},
        "unicode" => "héllo wörld ✓ 🐍 日本語",
        "above_2_53" => Integer.pow(2, 53) + 1,
        "above_2_64" => Integer.pow(2, 64) + 7,
        "negative_big" => -Integer.pow(2, 70),
        "float" => 3.141592653589793,
        "small_float" => -2.5e-10,
        "whole_float" => 2.0,
        "true" => true,
        "false" => false,
        "nil" => nil,
        "empty_map" => %{},
        "empty_list" => []
      }

      assert {:ok, %{"echoed" => ^args}} = Snakepit.execute("echo", args)
    end

    test "atom keys and atom values travel as strings" do
      assert {:ok, %{"echoed" => %{"a" => %{"b" => "c"}}}} =
               Snakepit.execute("echo", %{a: %{b: :c}})
    end

    test "a single value round-trips through the contract adapter" do
      for value <- [Integer.pow(2, 64) + 1, -1.5, "ü", [1, "two", nil], %{"k" => [true]}] do
        assert {:ok, ^value} = Snakepit.execute("echo", %{value: value}, pool_name: :contract)
      end
    end

    test "unknown tool fails with the Python AttributeError" do
      assert {:error, %Error{category: :worker, message: "Request failed"} = error} =
               Snakepit.execute("nonexistent_tool", %{})

      assert %Snakepit.Error.AttributeError{python_type: "AttributeError"} = error.details.reason
      assert error.details.exception_type == "AttributeError"
      assert error.details.command == "nonexistent_tool"
      assert error.details.pool_name == :default
    end

    test "Python exceptions keep their type and traceback" do
      assert {:error, %Error{} = error} = Snakepit.execute("error_demo", %{error_type: "value"})

      assert %Snakepit.Error.ValueError{message: message} = error.details.reason
      assert message =~ "demo value error"
      assert error.python_traceback =~ "ValueError"

      assert {:error, %Error{details: %{reason: %Snakepit.Error.KeyError{}}}} =
               Snakepit.execute("fail", %{kind: "key"}, pool_name: :contract)
    end

    test "a timeout shorter than the tool returns a :timeout error, and the pool keeps serving" do
      started = System.monotonic_time(:millisecond)

      assert {:error, %Error{category: :timeout, message: "Pool execute timed out"} = error} =
               Snakepit.execute("sleep_task", %{duration_ms: 3_000}, timeout: 300)

      elapsed = System.monotonic_time(:millisecond) - started
      assert elapsed < 2_000, "timed out after #{elapsed} ms"
      assert error.details == %{timeout_ms: 300, command: "sleep_task"}

      assert {:ok, %{"message" => "pong"}} = Snakepit.execute("ping", %{}, timeout: 10_000)
      refute_receive {:snakepit_reply, _, _}, 100
    end

    test "invalid arguments are rejected before any RPC" do
      assert {:error, %Error{category: :pool, details: %{reason: {:invalid_parameter, _, _}}}} =
               Snakepit.execute("echo", %{bad: {1, 2}})

      assert {:error, %Error{details: %{reason: {:invalid_parameter, :blob, :not_binary}}}} =
               Snakepit.execute("echo", %{}, binary_parameters: %{blob: 1})

      assert {:error, %Error{details: %{reason: {:invalid_parameter, :timeout, -1}}}} =
               Snakepit.execute("echo", %{}, timeout: -1)

      # Options as a map instead of a keyword list.
      assert {:error, %Error{details: %{reason: {:invalid_parameter, :opts, %{timeout: 5}}}}} =
               Snakepit.execute("echo", %{}, %{timeout: 5})

      assert {:error, %Error{details: %{reason: {:invalid_parameter, :opts, _}}}} =
               Snakepit.execute_stream("stream_progress", %{}, fn _ -> :ok end, %{})
    end

    test "unknown pools" do
      for name <- [:nope, "nope"] do
        assert {:error, %Error{category: :pool, message: "Pool not found", details: details}} =
                 Snakepit.execute("ping", %{}, pool_name: name)

        assert details.reason == :pool_not_found
        assert details.pool_name == name
      end

      assert {:ok, _} = Snakepit.execute("ping", %{}, pool_name: "default")
    end

    test "100 concurrent callers are all answered" do
      results =
        1..100
        |> Task.async_stream(&Snakepit.execute("echo", %{"i" => &1}),
          max_concurrency: 100,
          timeout: 60_000
        )
        |> Enum.map(fn {:ok, result} -> result end)

      assert results == Enum.map(1..100, &{:ok, %{"echoed" => %{"i" => &1}}})
    end

    test "emits [:snakepit, :request, :executed] from the caller" do
      test_pid = self()
      id = {__MODULE__, make_ref()}

      Snakepit.Telemetry.attach(
        id,
        [:snakepit, :request, :executed],
        fn _event, measurements, metadata, _ ->
          send(test_pid, {:executed, self(), measurements, metadata})
        end,
        nil
      )

      on_exit(fn -> Snakepit.Telemetry.detach(id) end)
      {:ok, _} = Snakepit.execute("ping", %{})

      assert_received {:executed, ^test_pid, %{duration_us: us},
                       %{command: "ping", success: true, pool: :default}}

      assert is_integer(us)
    end
  end

  describe "sessions" do
    test "objects stored in a session are found again by later calls of that session" do
      session = "session-#{System.unique_integer([:positive])}"

      assert {:ok, %{"stored" => "k"}} =
               Snakepit.execute_in_session(session, "store_object", %{key: "k", value: 42},
                 pool_name: :contract
               )

      for _ <- 1..10 do
        assert {:ok, 42} =
                 Snakepit.execute_in_session(session, "fetch_object", %{key: "k"},
                   pool_name: :contract
                 )
      end
    end
  end

  describe "streaming" do
    test "chunks arrive in order, the last one final" do
      test_pid = self()

      assert :ok =
               Snakepit.execute_stream("count_to", %{n: 5}, &send(test_pid, {:chunk, self(), &1}),
                 pool_name: :contract
               )

      chunks = collect_chunks()
      assert Enum.flat_map(chunks, &List.wrap(&1["count"])) == [1, 2, 3, 4, 5]
      assert List.last(chunks)["is_final"] == true
      assert Enum.all?(Enum.drop(chunks, -1), &(&1["is_final"] == false))
    end

    test "the callback can halt the stream" do
      result =
        Snakepit.execute_stream(
          "count_to",
          %{n: 100, delay_ms: 10},
          fn chunk -> if chunk["count"] == 3, do: :halt, else: :ok end,
          pool_name: :contract
        )

      assert result == :ok
      refute_receive {:snakepit_chunk, _, _, _, _}, 200
      assert {:ok, _} = Snakepit.execute("pid", %{}, pool_name: :contract)
    end

    test "{:halt, reason} and a raising callback are errors" do
      assert {:error, %Error{details: %{reason: :enough}}} =
               Snakepit.execute_stream("count_to", %{n: 10}, fn _ -> {:halt, :enough} end,
                 pool_name: :contract
               )

      assert {:error, %Error{details: %{reason: {:callback_exception, %RuntimeError{}, _}}}} =
               Snakepit.execute_stream("count_to", %{n: 10}, fn _ -> raise "boom" end,
                 pool_name: :contract
               )
    end

    test "a stream that outlives its timeout is stopped with a :timeout error" do
      assert {:error, %Error{category: :timeout, message: "Pool execute timed out"}} =
               Snakepit.execute_stream("count_to", %{n: 1_000, delay_ms: 20}, fn _ -> :ok end,
                 pool_name: :contract,
                 timeout: 300
               )

      refute_receive {:snakepit_chunk, _, _, _, _}, 200
    end

    test "the timeout bounds the whole stream, also while chunks wait in the mailbox" do
      started = System.monotonic_time(:millisecond)

      # Python produces the 20 chunks at once; up to the stream window of them wait in the
      # mailbox while the slow callback runs, so only a check between callbacks can stop it.
      assert {:error, %Error{category: :timeout}} =
               Snakepit.execute_stream("count_to", %{n: 20}, fn _ -> Process.sleep(100) end,
                 pool_name: :contract,
                 timeout: 300
               )

      # 300 ms plus the callback that was running; consuming all 20 would take 2 s.
      assert System.monotonic_time(:millisecond) - started < 1_000
      refute_receive {:snakepit_chunk, _, _, _, _}, 100
    end

    test "showcase stream_progress" do
      test_pid = self()

      assert :ok =
               Snakepit.execute_in_session_stream(
                 "s",
                 "stream_progress",
                 %{steps: 3, delay_ms: 1},
                 &send(test_pid, {:chunk, self(), &1})
               )

      chunks = collect_chunks()
      assert Enum.map(Enum.filter(chunks, &Map.has_key?(&1, "step")), & &1["step"]) == [1, 2, 3]
      assert List.last(chunks)["is_final"]
    end
  end

  describe "introspection" do
    test "list_workers and get_stats count the workers of each pool" do
      assert length(Snakepit.list_workers()) == 4
      contract = Snakepit.Pool.list_workers(Snakepit.Pool, :contract)
      assert length(contract) == 2
      assert Enum.all?(contract, &String.starts_with?(&1, "contract_worker_"))

      assert %{workers: 4} = Snakepit.get_stats()

      assert %{workers: 2, available: available} =
               Snakepit.Pool.get_stats(Snakepit.Pool, :default)

      assert available in 0..2
      assert {:error, {:pool_not_found, :nope}} = Snakepit.Pool.get_stats(Snakepit.Pool, :nope)
      assert {:error, {:pool_not_found, :nope}} = Snakepit.Pool.list_workers(Snakepit.Pool, :nope)
    end

    test "workers are separate OS processes" do
      os_pids = Snakepit.Worker.os_pids()
      assert length(os_pids) == 4
      assert length(Enum.uniq(os_pids)) == 4
      beam = String.to_integer(System.pid())
      refute beam in os_pids

      assert {:ok, python_pid} = Snakepit.execute("pid", %{}, pool_name: :contract)
      assert python_pid != beam
      assert python_pid in os_pids
    end

    test "await_ready is :ok once every pool has a ready worker" do
      assert :ok = Snakepit.Pool.await_ready()
      assert :ok = Snakepit.Pool.await_ready(:contract, 1_000)
    end
  end

  defp collect_chunks(acc \\ []) do
    receive do
      {:chunk, _pid, chunk} -> collect_chunks([chunk | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end
end
