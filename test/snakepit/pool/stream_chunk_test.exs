defmodule Snakepit.Pool.StreamChunkTest do
  use ExUnit.Case, async: true

  import Snakepit.Pool.Stream, only: [chunk: 3]

  test "map payloads get is_final" do
    assert chunk(%{"step" => 1}, false, %{}) == %{"step" => 1, "is_final" => false}
  end

  test "non-map JSON is wrapped as data; empty payload is an empty map" do
    assert chunk(5, true, nil) == %{"data" => 5, "is_final" => true}
    assert chunk([1], false, %{}) == %{"data" => [1], "is_final" => false}
    assert chunk(nil, true, %{}) == %{"is_final" => true}
  end

  test "raw bytes become base64; metadata is attached when present" do
    assert chunk({:binary, <<1, 2>>}, false, %{"k" => "v"}) ==
             %{"raw_data_base64" => "AQI=", "is_final" => false, "_metadata" => %{"k" => "v"}}
  end
end
