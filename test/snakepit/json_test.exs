defmodule Snakepit.JSONTest do
  use ExUnit.Case, async: true

  alias Snakepit.JSON

  test "decodes scalars, arrays and objects" do
    assert JSON.decode(~s({"a": [1, -2.5, 3e2, true, false, null], "b": {"c": "d"}})) ==
             {:ok, %{"a" => [1, -2.5, 300.0, true, false, nil], "b" => %{"c" => "d"}}}

    assert JSON.decode(" 12345678901234567890123 ") == {:ok, 12_345_678_901_234_567_890_123}
    assert JSON.decode("[]") == {:ok, []}
    assert JSON.decode("{}") == {:ok, %{}}
  end

  test "decodes escapes, including surrogate pairs" do
    assert JSON.decode(~S("line\nnext \"q\" \\ \/ \u00e9 \ud83d\ude00")) ==
             {:ok, "line\nnext \"q\" \\ / é 😀"}
  end

  test "a Python traceback payload" do
    line = ~S"""
    {"type": "ModuleNotFoundError", "message": "No module named 'nope'", "traceback": "Traceback (most recent call last):\n  File \"x.py\", line 1\nModuleNotFoundError: No module named 'nope'\n"}
    """

    assert {:ok, %{"type" => "ModuleNotFoundError", "traceback" => tb}} = JSON.decode(line)
    assert tb =~ "File \"x.py\", line 1\n"
  end

  test "rejects invalid JSON" do
    for text <- ["", "{", "[1,]", ~s({"a" 1}), "tru", ~s("unterminated), "01x", ~s("\\x"), "1 2"] do
      assert {:error, _} = JSON.decode(text), "expected an error for #{inspect(text)}"
    end
  end

  test "encodes terms as call arguments are encoded, compact or indented" do
    assert JSON.encode(%{a: [1, 2.5, nil, true], b: "é"}) ==
             {:ok, ~s({"a":[1,2.5,null,true],"b":"é"})}

    assert JSON.encode(%{"n" => 12_345_678_901_234_567_890_123}) ==
             {:ok, ~s({"n":12345678901234567890123})}

    assert {:ok, pretty} = JSON.encode(%{"a" => %{"b" => [1]}}, pretty: true)
    assert pretty == "{\n  \"a\": {\n    \"b\": [\n      1\n    ]\n  }\n}"
    assert JSON.decode(pretty) == {:ok, %{"a" => %{"b" => [1]}}}
  end

  test "values JSON cannot carry are refused with their path" do
    assert {:error, {"a[1]", message}} = JSON.encode(%{a: [1, {:tuple}]})
    assert message =~ "tuple"
    assert {:error, {"s", _}} = JSON.encode(%{s: <<0xFF>>})
  end
end
