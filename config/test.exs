import Config

# Integration tests start pools themselves (Snakepit.TestSupport.start_pools/1).
config :snakepit, pooling_enabled: false

config :logger, level: :warning
