defmodule Snakepit.Pool.ArgsTest do
  use ExUnit.Case, async: true

  alias Snakepit.Pool.Args

  test "dates and times become ISO 8601 strings, MapSets lists, anywhere in the arguments" do
    {:ok, datetime, 0} = DateTime.from_iso8601("2024-05-06T07:08:09Z")

    args = %{
      a: ~D[2024-01-02],
      b: [~T[10:11:12.5], %{c: ~N[2024-01-02 03:04:05]}],
      d: MapSet.new([datetime]),
      e: {:tuple, ~D[2024-01-02]},
      f: 1
    }

    assert Args.convert(args) == %{
             a: "2024-01-02",
             b: ["10:11:12.5", %{c: "2024-01-02T03:04:05"}],
             d: ["2024-05-06T07:08:09Z"],
             # Tuples are refused by the NIF anyway; their contents are left alone.
             e: {:tuple, ~D[2024-01-02]},
             f: 1
           }
  end

  test "other structs and improper list tails are left for the NIF to report" do
    uri = URI.parse("http://x")

    assert Args.convert(%{u: uri, l: [~D[2024-01-02] | :tail]}) == %{
             u: uri,
             l: ["2024-01-02" | :tail]
           }
  end

  test "only a refusal naming a struct triggers the conversion" do
    assert Args.struct_refusal?(
             {:error, {:invalid_parameter, "a.b", "cannot encode struct Elixir.Date (...)"}}
           )

    refute Args.struct_refusal?({:error, {:invalid_parameter, "a", "cannot encode tuple"}})
    refute Args.struct_refusal?({:ok, 1})
  end
end
