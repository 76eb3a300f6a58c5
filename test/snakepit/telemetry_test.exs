defmodule Snakepit.TelemetryTest do
  use ExUnit.Case, async: true

  alias Snakepit.Telemetry

  doctest Snakepit.Telemetry

  test "local handlers receive events until detached" do
    id = {__MODULE__, make_ref()}
    test_pid = self()
    event = [:snakepit, :test, make_ref()]

    assert :ok =
             Telemetry.attach(
               id,
               event,
               fn e, m, md, c -> send(test_pid, {e, m, md, c}) end,
               :cfg
             )

    assert {:error, :already_exists} = Telemetry.attach(id, event, fn _, _, _, _ -> :ok end, nil)

    Telemetry.execute(event, %{n: 1}, %{k: :v})
    assert_received {^event, %{n: 1}, %{k: :v}, :cfg}

    assert :ok = Telemetry.detach(id)
    assert {:error, :not_found} = Telemetry.detach(id)
    Telemetry.execute(event, %{n: 2}, %{})
    refute_received {^event, _, _, _}
  end

  @tag :capture_log
  test "a raising handler is detached" do
    id = {__MODULE__, make_ref()}
    event = [:snakepit, :test, make_ref()]
    :ok = Telemetry.attach(id, event, fn _, _, _, _ -> raise "boom" end, nil)
    assert :ok = Telemetry.execute(event, %{}, %{})
    assert {:error, :not_found} = Telemetry.detach(id)
  end
end
