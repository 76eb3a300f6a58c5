defmodule Snakepit.CrashBarrierTest do
  use ExUnit.Case, async: true

  alias Snakepit.CrashBarrier

  doctest Snakepit.CrashBarrier
  doctest Snakepit.Pool.Restart

  defp pool_barrier(env) do
    {:ok, config} = Snakepit.Config.load(env)
    hd(config.pools).crash_barrier
  end

  describe "configuration" do
    test "defaults as upstream: disabled, retry idempotent calls once, 60 s taint" do
      assert pool_barrier([]) == %{
               enabled: false,
               retry: :idempotent,
               max_restarts: 1,
               taint_duration_ms: 60_000,
               mark_on: [:segfault, :oom, :gpu],
               taint_on_exit_codes: []
             }
    end

    test "global keyword, legacy keys and aliases; the pool's map wins" do
      env = [
        crash_barrier: [enabled: true, max_retries: 2, mark_on: ["abort"]],
        crash_barrier_taint_duration_ms: 1_000,
        pools: [
          %{name: :a},
          %{name: :b, crash_barrier: %{"retry_idempotent" => false, taint_on_exit_codes: [9]}}
        ]
      ]

      {:ok, config} = Snakepit.Config.load(env)
      [a, b] = Enum.map(config.pools, & &1.crash_barrier)
      assert %{enabled: true, max_restarts: 2, mark_on: [:abort], taint_duration_ms: 1_000} = a
      assert a.retry == :idempotent
      assert %{enabled: true, retry: :never, taint_on_exit_codes: [9]} = b
    end

    test "invalid values stop the configuration, naming the key and pool" do
      assert {:error, message} =
               Snakepit.Config.load(pools: [%{name: :p, crash_barrier: %{retry: :sometimes}}])

      assert message =~ "crash_barrier.retry"
      assert message =~ "pool :p"

      assert {:error, message} = Snakepit.Config.load(crash_barrier: :on)
      assert message =~ "invalid crash_barrier: :on"
    end
  end

  describe "classification and taint" do
    test "exit statuses" do
      assert CrashBarrier.classify({:exit_status, 137}) == :oom
      assert CrashBarrier.classify({:exit_status, 134}) == :abort
      assert CrashBarrier.classify(:shutdown) == nil
      assert CrashBarrier.exit_code({:shutdown, {:exit_status, 3}}) == 3
    end

    test "only classified exits in mark_on or listed codes taint, and only when enabled" do
      {:ok, enabled} = CrashBarrier.build(%{}, %{enabled: true, taint_on_exit_codes: [42]})
      assert CrashBarrier.taint?(enabled, {:exit_status, 137})
      refute CrashBarrier.taint?(enabled, {:exit_status, 134})
      assert CrashBarrier.taint?(enabled, {:exit_status, 42})
      refute CrashBarrier.taint?(enabled, :recycled)
      refute CrashBarrier.taint?(CrashBarrier.defaults(), {:exit_status, 139})
    end
  end

  describe "retries" do
    test "the policy decides; idempotent is read from opts or args" do
      {:ok, always} = CrashBarrier.build(%{}, %{retry: true, max_restarts: 3})
      {:ok, never} = CrashBarrier.build(%{}, %{retry: :never})
      assert CrashBarrier.retries(always, [], %{}) == 3
      assert CrashBarrier.retries(never, [idempotent: true], %{}) == 0
      assert CrashBarrier.retries(CrashBarrier.defaults(), [], %{idempotent: true}) == 1
      assert CrashBarrier.retries(CrashBarrier.defaults(), [], %{"idempotent" => false}) == 0
    end
  end

  test "the pool's NIF config: abandon_grace_ms nil → NIF default, :infinity → never" do
    {:ok, config} =
      Snakepit.Config.load(pools: [%{name: :p}, %{name: :q, abandon_grace_ms: :infinity}])

    [default, never] = Enum.map(config.pools, &Snakepit.Pool.nif_config/1)
    refute Map.has_key?(default, :abandon_grace_ms)
    assert Map.fetch!(never, :abandon_grace_ms) == nil

    {:ok, config} = Snakepit.Config.load(pools: [%{name: :p, abandon_grace_ms: 250}])
    assert Snakepit.Pool.nif_config(hd(config.pools)).abandon_grace_ms == 250
  end
end
