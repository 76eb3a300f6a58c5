defmodule Snakepit.Integration.LargeResultTest do
  # Results and stream chunks holding maps with more than 128 keys. The NIF cannot build such a
  # map in an OwnedEnv and send it from its tokio threads (OTP 25.1 .. 27.2 segfault,
  # erlang/otp#8208), so it sends them in external term format; these tests would crash the VM
  # without that. Also: results nested deeper than the codec allows are a clear error.
  use ExUnit.Case, async: false

  import Snakepit.TestSupport

  alias Snakepit.Error

  setup_all do
    start_snakepit!(
      pools: [
        %{name: :default, pool_size: 1},
        %{
          name: :contract,
          pool_size: 1,
          adapter_args: fixture_adapter("ContractAdapter"),
          adapter_env: fixture_env()
        }
      ]
    )

    await_workers!(2)
    :ok
  end

  defp keys(n, prefix \\ "k"), do: Map.new(1..n, &{"#{prefix}#{&1}", &1})

  defp echo(args), do: Snakepit.execute("echo", args, timeout: 60_000)

  describe "showcase echo of large maps" do
    for n <- [128, 129, 1000, 100_000] do
      test "#{n} keys at the top level" do
        expected = keys(unquote(n))
        assert {:ok, %{"echoed" => ^expected}} = echo(expected)
      end
    end

    test "maps over 128 keys nested in lists and maps" do
      big = keys(129)
      bigger = keys(1000, "x")

      args = %{
        "list" => [1, big, [bigger, %{"small" => true}]],
        "map" => %{"inner" => %{"deeper" => bigger}, "n" => 1}
      }

      assert {:ok, %{"echoed" => ^args}} = echo(args)
    end

    test "atom keys come back as strings, as on the direct path" do
      args = Map.new(1..200, &{String.to_atom("a#{&1}"), &1})
      expected = Map.new(args, fn {k, v} -> {Atom.to_string(k), v} end)
      assert {:ok, %{"echoed" => ^expected}} = echo(args)
    end

    test "every kind of value gives the same term as the direct path" do
      values = %{
        "nil" => nil,
        "true" => true,
        "false" => false,
        "ints" => [0, 1, 255, 256, -1, -256, 2_147_483_647, 2_147_483_648, -2_147_483_648],
        "more_ints" => [-2_147_483_649, 9_223_372_036_854_775_807, -9_223_372_036_854_775_808],
        "bigints" => [
          18_446_744_073_709_551_616,
          -18_446_744_073_709_551_616,
          Integer.pow(10, 40),
          -Integer.pow(2, 2100)
        ],
        "floats" => [1.5, -2.25, 1.0e300, 5.0e-324, 0.1],
        "special" => [:nan, :infinity, :neg_infinity],
        "strings" => ["", "héllo ✓", String.duplicate("z", 1000)],
        "atom" => :some_atom,
        "empty" => [%{}, []],
        "nested" => %{"a" => [%{"b" => [nil, 1]}]}
      }

      # Direct path (no map over 128 keys) ...
      assert {:ok, %{"echoed" => direct}} = echo(values)
      # ... and the external-format path give the same terms.
      assert {:ok, %{"echoed" => via_etf}} = echo(Map.merge(keys(200), values))
      assert Map.take(via_etf, Map.keys(values)) == direct
      assert Map.drop(via_etf, Map.keys(values)) == keys(200)
      assert direct["special"] == [:nan, :infinity, :neg_infinity]
      assert direct["atom"] == "some_atom"
      assert direct["bigints"] == values["bigints"]
    end
  end

  describe "fixture tools" do
    test "a binary result whose meta map has more than 128 keys" do
      expected = Map.merge(%{"size" => 2}, Map.new(0..199, &{"m#{&1}", &1}))

      assert {:ok, {:binary, <<0, 255>>, ^expected}} =
               Snakepit.execute("bytes_with_meta", %{extra: 200},
                 pool_name: :contract,
                 binary_parameters: %{data: <<0, 255>>}
               )
    end

    test "stream chunks holding maps with more than 128 keys" do
      test_pid = self()

      assert :ok =
               Snakepit.execute_stream(
                 "stream_big_map",
                 %{n: 500, chunks: 3},
                 fn chunk -> send(test_pid, {:chunk, chunk}) end,
                 pool_name: :contract
               )

      for c <- 0..2 do
        expected = Map.new(0..499, &{"k#{&1}", &1 + c}) |> Map.put("is_final", false)
        assert_received {:chunk, ^expected}
      end

      assert_received {:chunk, %{"done" => true, "is_final" => false}}
    end

    test "a stream halted after a large chunk leaves nothing in the mailbox" do
      assert :ok =
               Snakepit.execute_stream(
                 "stream_big_map",
                 %{n: 300, chunks: 50},
                 fn _chunk -> :halt end,
                 pool_name: :contract
               )

      refute_receive {:snakepit_chunk_etf, _, _}, 200
      refute_receive {:snakepit_chunk, _, _, _, _}, 0
    end

    test "a result nested deeper than 128 levels is a clear error; the worker keeps serving" do
      assert {:ok, pid} = Snakepit.execute("pid", %{}, pool_name: :contract)

      nested = Enum.reduce(1..128, 1, fn _, acc -> [acc] end)
      assert {:ok, ^nested} = Snakepit.execute("deep", %{levels: 128}, pool_name: :contract)

      for levels <- [129, 130, 900] do
        assert {:error, %Error{} = error} =
                 Snakepit.execute("deep", %{levels: levels}, pool_name: :contract)

        assert error.details.reason ==
                 {:invalid_parameter, "result", "result nests deeper than 128 levels"}
      end

      assert {:ok, ^pid} = Snakepit.execute("pid", %{}, pool_name: :contract)
      expected = keys(300)
      assert {:ok, ^expected} = Snakepit.execute("echo", %{value: expected}, pool_name: :contract)
    end
  end
end
