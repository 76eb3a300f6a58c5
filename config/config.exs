import Config

config :snakepit, pooling_enabled: false

config :logger, :console, format: "$time [$level] $message\n"

if File.exists?(Path.join(__DIR__, "#{config_env()}.exs")) do
  import_config "#{config_env()}.exs"
end
