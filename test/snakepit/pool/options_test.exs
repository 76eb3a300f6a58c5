defmodule Snakepit.Pool.OptionsTest do
  use ExUnit.Case, async: true

  alias Snakepit.Pool.Options

  test "builds the NIF opts map" do
    assert {:ok, args, opts} =
             Options.build(
               %{"a" => 1},
               [session_id: "s1", affinity: "strict_queue"],
               5_000,
               false
             )

    assert args == %{"a" => 1}
    assert opts.session_id == "s1"
    assert opts.affinity == :strict_queue
    assert opts.timeout_ms == 5_000
    assert opts.binary_parameters == %{}
    assert opts.stream == false
    assert opts.stream_window == 16
    assert %{"correlation_id" => cid} = opts.metadata
    assert cid =~ ~r/\A[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\z/
  end

  test "stream_window must be a positive integer" do
    assert {:ok, _, %{stream_window: 4}} = Options.build(%{}, [stream_window: 4], 1, true)

    for bad <- [0, -1, :many, 1.5] do
      assert {:error, {:invalid_parameter, :stream_window, ^bad}} =
               Options.build(%{}, [stream_window: bad], 1, true)
    end
  end

  test "unknown affinity strings fall back to the pool's mode (nil)" do
    assert {:ok, _, %{affinity: nil}} = Options.build(%{}, [affinity: "sticky"], 1, false)
    assert {:ok, _, %{affinity: :hint}} = Options.build(%{}, [affinity: :hint], 1, false)
  end

  test "correlation_id moves from args to metadata; the option wins" do
    assert {:ok, args, opts} = Options.build(%{correlation_id: "c1", x: 1}, [], :infinity, false)
    assert args == %{x: 1}
    assert opts.metadata["correlation_id"] == "c1"
    assert opts.timeout_ms == :infinity

    assert {:ok, %{}, opts} =
             Options.build(%{"correlation_id" => "c1"}, [correlation_id: "c2"], 1, false)

    assert opts.metadata["correlation_id"] == "c2"
  end

  test "thread_sensitive adds metadata" do
    assert {:ok, _, %{metadata: %{"thread_sensitive" => "true"}}} =
             Options.build(%{}, [thread_sensitive: true], 1, false)

    assert {:ok, _, %{metadata: %{"thread_sensitive" => "true"}}} =
             Options.build(%{}, [thread_sensitive: "true"], 1, false)

    assert {:ok, _, %{metadata: metadata}} = Options.build(%{}, [], 1, false)
    refute Map.has_key?(metadata, "thread_sensitive")
  end

  test "binary_parameters must be binaries" do
    assert {:ok, _, %{binary_parameters: %{"blob" => <<0, 255>>}}} =
             Options.build(%{}, [binary_parameters: %{blob: <<0, 255>>}], 1, false)

    assert {:error, {:invalid_parameter, :blob, :not_binary}} =
             Options.build(%{}, [binary_parameters: %{blob: 42}], 1, false)
  end

  test "session ids are strings" do
    assert {:ok, _, %{session_id: "42"}} = Options.build(%{}, [session_id: 42], 1, false)

    assert {:error, {:invalid_parameter, :session_id, {:a}}} =
             Options.build(%{}, [session_id: {:a}], 1, false)
  end

  test "stream options" do
    assert {:ok, _, %{stream: true, stream_window: 4}} =
             Options.build(%{}, [stream_window: 4], 1, true)
  end

  test "args: maps, keyword lists, anything else is an error" do
    assert Options.args(%{a: 1}) == {:ok, %{a: 1}}
    assert Options.args(a: 1) == {:ok, %{a: 1}}
    assert Options.args([]) == {:ok, %{}}
    assert Options.args([1, 2]) == {:error, {:invalid_parameter, :args, :not_a_map}}
    assert Options.args("x") == {:error, {:invalid_parameter, :args, :not_a_map}}
    # Structs are not argument maps (their fields would become arguments, `__struct__` too).
    assert Options.args(~D[2024-01-02]) == {:error, {:invalid_parameter, :args, :not_a_map}}
    assert Options.args(MapSet.new([1])) == {:error, {:invalid_parameter, :args, :not_a_map}}
  end

  test "pool_name: explicit option, else the default pool" do
    assert Options.pool_name(pool_name: :other) == :other
    assert Options.pool_name(pool_name: "other") == "other"
    assert Options.pool_name(pool: Snakepit.Pool) == Snakepit.Pool.default_pool()
    assert Options.pool_name(pool: :other) == :other
    assert Options.pool_name(pool: self()) == Snakepit.Pool.default_pool()
    assert Options.pool_name([]) == Snakepit.Pool.default_pool()
  end

  test "command: a UTF-8 string or an atom's name" do
    assert Options.command("ping") == {:ok, "ping"}
    assert Options.command(:ping) == {:ok, "ping"}
    assert Options.command(1) == {:error, {:invalid_parameter, :command, 1}}
    assert Options.command(nil) == {:error, {:invalid_parameter, :command, nil}}
    assert Options.command("") == {:error, {:invalid_parameter, :command, ""}}
    assert Options.command(<<0xFF>>) == {:error, {:invalid_parameter, :command, <<0xFF>>}}
  end

  test "invalid UTF-8 session ids and malformed binary_parameters are errors, not raises" do
    assert {:error, {:invalid_parameter, :session_id, <<0xFF>>}} =
             Options.build(%{}, [session_id: <<0xFF>>], 1_000, false)

    assert {:error, {:invalid_parameter, :binary_parameters, 1}} =
             Options.build(%{}, [binary_parameters: [1]], 1_000, false)

    assert {:error, {:invalid_parameter, "k", :not_binary}} =
             Options.build(%{}, [binary_parameters: %{"k" => 1}], 1_000, false)
  end

  test "timeouts beyond what receive accepts mean :infinity" do
    assert Snakepit.Pool.Call.timeout([timeout: Integer.pow(2, 70)], 5) == {:ok, :infinity}
    assert Snakepit.Pool.Call.timeout([timeout: 4_294_967_295], 5) == {:ok, 4_294_967_295}
    assert {:error, _} = Snakepit.Pool.Call.timeout([timeout: -1], 5)
    # The configured default too (pool_request_timeout: 5_000_000_000).
    assert Snakepit.Pool.Call.timeout([], 5_000_000_000) == {:ok, :infinity}
    assert Snakepit.Pool.Call.timeout([], 300_000) == {:ok, 300_000}
  end
end
