defmodule Snakepit.ConfigTest do
  use ExUnit.Case, async: true

  alias Snakepit.Config

  doctest Snakepit.Config
  doctest Snakepit.Defaults

  defp load!(env) do
    {:ok, config} = Config.load(env)
    config
  end

  describe "legacy single pool" do
    test "defaults: one :default pool, showcase adapter, balanced timeouts" do
      config = load!([])
      assert [pool] = config.pools
      assert config.default_pool == :default
      assert pool.name == :default
      assert pool.pool_size == System.schedulers_online() * 2
      assert pool.affinity == :hint
      assert pool.worker_profile == :process
      assert pool.capacity == 1

      assert pool.adapter_args == [
               "--adapter",
               "snakepit_bridge.adapters.showcase.ShowcaseAdapter"
             ]

      assert config.request_timeout == 300_000
      assert config.stream_timeout == 900_000
      assert config.queue_timeout == 10_000
      assert pool.queue_timeout_ms == 10_000
      assert pool.max_queue_size == 1000
      refute config.pooling_enabled
    end

    test "top-level pool_size wins over pool_config.pool_size; other pool_config keys kept" do
      config = load!(pool_size: 3, pool_config: %{pool_size: 7, affinity: :strict_queue})
      assert [%{pool_size: 3, affinity: :strict_queue}] = config.pools
    end

    test "pool_config.pool_size is used without a top-level pool_size" do
      assert [%{pool_size: 7}] = load!(pool_config: %{pool_size: 7}).pools
    end

    test "adapter_args and adapter_module come from the top level" do
      config =
        load!(adapter_args: ["--adapter", "x.Y"], adapter_module: Snakepit.Adapters.GRPCPython)

      assert [%{adapter_args: ["--adapter", "x.Y"], adapter_module: Snakepit.Adapters.GRPCPython}] =
               config.pools
    end

    test "global affinity applies to the legacy pool" do
      assert [%{affinity: :strict_fail_fast}] = load!(affinity: "STRICT_FAIL_FAST").pools
    end
  end

  describe "multi-pool" do
    test "normalizes each pool and takes the first as default" do
      config =
        load!(
          pools: [
            %{name: :a, pool_size: 2},
            [
              name: :b,
              pool_size: 1,
              worker_profile: :thread,
              threads_per_worker: 4,
              affinity: "strict_queue"
            ]
          ]
        )

      assert config.default_pool == :a
      assert [a, b] = config.pools
      assert a.capacity == 1
      assert b.capacity == 4
      assert b.affinity == :strict_queue
      assert "--max-workers" in b.adapter_args

      assert [
               "--adapter",
               "snakepit_bridge.adapters.threaded_showcase.ThreadedShowcaseAdapter" | _
             ] = b.adapter_args
    end

    test "thread profile keeps the user's --adapter and --max-workers" do
      [pool] =
        load!(
          pools: [
            %{
              name: :t,
              worker_profile: :thread,
              threads_per_worker: 3,
              adapter_args: ["--adapter", "m.C", "--max-workers", "9"]
            }
          ]
        ).pools

      assert pool.adapter_args == ["--adapter", "m.C", "--max-workers", "9"]
      assert pool.capacity == 3
    end

    test "top-level pool_size is the default pool_size of pools that omit it" do
      assert [%{pool_size: 5}, %{pool_size: 1}] =
               load!(pool_size: 5, pools: [%{name: :a}, %{name: :b, pool_size: 1}]).pools
    end

    test "pool_size is capped by max_workers" do
      assert [%{pool_size: 2}] = load!(pools: [%{name: :a, pool_size: 10, max_workers: 2}]).pools
    end

    test "adapter_env accepts maps and keyword-ish lists, normalized to string pairs" do
      [a, b] =
        load!(
          pools: [
            %{name: :a, adapter_env: %{"FOO" => "1"}},
            %{name: :b, adapter_env: [{:BAR, 2}]}
          ]
        ).pools

      assert a.adapter_env == [{"FOO", "1"}]
      assert b.adapter_env == [{"BAR", "2"}]
    end

    test "an empty pools list means one :default pool" do
      assert [%{name: :default}] = load!(pools: []).pools
    end

    test "string pool names become atoms" do
      assert [%{name: :str_pool}] = load!(pools: [%{name: "str_pool"}]).pools
    end
  end

  describe "timeouts" do
    test "timeout_profile sets the derived timeouts" do
      config = load!(timeout_profile: :production_strict)

      assert {config.request_timeout, config.stream_timeout, config.queue_timeout} ==
               {60_000, 300_000, 5_000}

      assert load!(timeout_profile: :batch).stream_timeout == :infinity
    end

    test "explicit keys win over the profile" do
      config = load!(timeout_profile: :batch, pool_request_timeout: 1_000, pool_queue_timeout: 50)
      assert config.request_timeout == 1_000
      assert config.queue_timeout == 50
      assert [%{queue_timeout_ms: 50, request_timeout: 1_000}] = config.pools
    end

    test "session TTL drives the scheduler's affinity TTL" do
      assert [%{affinity_ttl_ms: 120_000}] = load!(session_default_ttl: 120).pools
    end
  end

  describe "validation errors name the key" do
    test "unknown affinity" do
      assert {:error, message} = Config.load(pools: [%{name: :p, affinity: :sticky}])
      assert message =~ ":affinity for pool :p"
      assert message =~ ":sticky"
    end

    test "unknown global affinity" do
      assert {:error, message} = Config.load(affinity: "nope")
      assert message =~ "invalid :affinity"
    end

    test "pool_size 0" do
      assert {:error, message} = Config.load(pool_size: 0)
      assert message =~ ":pool_size for pool :default: 0"
    end

    test "negative timeouts" do
      assert {:error, message} = Config.load(pool_queue_timeout: -1, pool_request_timeout: -5)
      assert message =~ ":pool_queue_timeout: -1"
      assert message =~ ":pool_request_timeout: -5"
    end

    test "duplicate pool names" do
      assert {:error, message} = Config.load(pools: [%{name: :a}, %{name: :b}, %{name: :a}])
      assert message =~ "duplicate pool names: [:a]"
    end

    test "missing pool name" do
      assert {:error, message} = Config.load(pools: [%{pool_size: 1}])
      assert message =~ "pool #1: missing required key :name"
    end

    test "bad worker profile, threads, capacity strategy and adapter_args" do
      assert {:error, message} =
               Config.load(
                 pools: [
                   %{
                     name: :p,
                     worker_profile: :fiber,
                     threads_per_worker: 0,
                     capacity_strategy: :x,
                     adapter_args: "--adapter x"
                   }
                 ]
               )

      for key <- [":worker_profile", ":threads_per_worker", ":capacity_strategy", ":adapter_args"] do
        assert message =~ "#{key} for pool :p"
      end
    end

    test "pools must be a list" do
      assert {:error, message} = Config.load(pools: %{name: :a})
      assert message =~ "invalid :pools"
    end

    test "unknown timeout profile" do
      assert {:error, message} = Config.load(timeout_profile: :warp)
      assert message =~ ":timeout_profile :warp"
    end
  end

  describe "adapter_module and capacity_strategy resolution" do
    test "pool key, then legacy pool_config, then global" do
      env = [
        adapter_module: GlobalAdapter,
        pool_config: %{adapter_module: LegacyAdapter},
        pools: [%{name: :a}, %{name: :b, adapter_module: PoolAdapter}]
      ]

      assert [%{adapter_module: LegacyAdapter}, %{adapter_module: PoolAdapter}] = load!(env).pools

      assert [%{adapter_module: GlobalAdapter}] =
               load!(adapter_module: GlobalAdapter, pools: [%{name: :a}]).pools
    end

    test "top-level capacity_strategy is the pools' default" do
      assert [%{capacity: 1}] =
               load!(
                 capacity_strategy: :profile,
                 pools: [%{name: :t, worker_profile: :thread, threads_per_worker: 4}]
               ).pools
    end
  end

  test "parse_affinity/1" do
    assert Config.parse_affinity(:hint) == :hint
    assert Config.parse_affinity(" Strict_Queue ") == :strict_queue
    assert Config.parse_affinity("x") == nil
    assert Config.parse_affinity(nil) == nil
  end

  test "unknown pool keys are logged with the closest known key" do
    log =
      ExUnit.CaptureLog.capture_log(fn ->
        config = load!(pooling_enabled: true, pools: [%{name: :p, pool_szie: 1, pool_size: 2}])
        assert [%{name: :p, pool_size: 2}] = config.pools
      end)

    assert log =~ "unknown key :pool_szie in pool :p (did you mean :pool_size?)"
  end
end
