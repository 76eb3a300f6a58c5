defmodule Snakepit.Worker.Launch do
  @moduledoc false
  # Pure helpers of Snakepit.Worker: the Port command line and environment, and parsing of the
  # worker's SNAKEPIT_READY / SNAKEPIT_FAILED lines (docs/ARCHITECTURE.md, "Worker process
  # protocol").

  alias Snakepit.Error

  @thread_caps ~w(OPENBLAS_NUM_THREADS OMP_NUM_THREADS MKL_NUM_THREADS NUMEXPR_NUM_THREADS)
  @python_grace_ms 1_000

  @doc false
  # `run_id` (Snakepit.ProcessRegistry) goes on the command line as `--snakepit-run-id`, so a
  # later BEAM can tell this run's workers from unrelated processes that reuse their pids.
  @spec port_spec(map(), String.t(), Path.t(), String.t() | nil) :: {String.t(), list()}
  def port_spec(config, worker_id, socket, run_id \\ nil) do
    run = if run_id, do: ["--snakepit-run-id", run_id], else: []

    args =
      ["-u", "-m", "snakepit_bridge.server"] ++
        config.adapter_args ++ ["--socket", socket, "--worker-id", worker_id] ++ run

    options = [
      :binary,
      :exit_status,
      {:line, 65_536},
      :use_stdio,
      :stderr_to_stdout,
      :hide,
      args: args,
      env: env(config)
    ]

    {config.python, options}
  end

  @doc false
  # PYTHONPATH = <snakepit priv>/python : user's adapter_env PYTHONPATH : inherited PYTHONPATH.
  # BLAS/OpenMP thread caps default to 1 (each worker is one process among many) unless the
  # BEAM's environment or adapter_env sets them; adapter_env wins for every other key.
  @spec env(map()) :: [{charlist(), charlist()}]
  def env(config) do
    user = config.adapter_env
    {user_paths, user_rest} = Enum.split_with(user, fn {k, _} -> k == "PYTHONPATH" end)

    python_path =
      [priv_python() | Enum.map(user_paths, &elem(&1, 1))]
      |> Kernel.++([System.get_env("PYTHONPATH")])
      |> Enum.reject(&(&1 in [nil, ""]))
      |> Enum.join(":")

    caps = for var <- @thread_caps, do: {var, System.get_env(var) || "1"}

    # setsid() in Python so that terminate/2 can kill anything the adapter left in the group.
    group = if config.process_group_kill, do: [{"SNAKEPIT_PROCESS_GROUP", "1"}], else: []

    # Python's grace for in-flight calls once stdin closes. The pool drains its calls before
    # it closes a worker's stdin, and when the BEAM died nobody waits for a result, so a short
    # grace (cleanup code only) gets the process and its children gone quickly.
    grace = [{"SNAKEPIT_SHUTDOWN_GRACE_MS", "#{@python_grace_ms}"}]

    ([{"PYTHONPATH", python_path}, {"PYTHONUNBUFFERED", "1"}] ++
       caps ++ group ++ grace ++ user_rest)
    |> Enum.reverse()
    |> Enum.uniq_by(&elem(&1, 0))
    |> Enum.reverse()
    |> Enum.map(fn {k, v} -> {String.to_charlist(k), String.to_charlist(v)} end)
  end

  @doc false
  @spec priv_python() :: String.t()
  def priv_python, do: Path.join(to_string(:code.priv_dir(:snakepit)), "python")

  @doc false
  # The ready line is `SNAKEPIT_READY {"pid": 123, "endpoint": "unix:/..."}`; only the pid is read.
  @spec ready_pid(String.t()) :: pos_integer() | nil
  def ready_pid(json) do
    case Regex.run(~r/"pid"\s*:\s*(\d+)/, json) do
      [_, pid] -> String.to_integer(pid)
      nil -> nil
    end
  end

  @doc false
  @spec failure_payload(String.t()) :: map()
  def failure_payload(json) do
    case Snakepit.JSON.decode(String.trim(json)) do
      {:ok, payload} when is_map(payload) -> payload
      _ -> %{"type" => "StartupError", "message" => json}
    end
  end

  @doc false
  # The error a failed start reports: the adapter's Python exception when the worker printed
  # SNAKEPIT_FAILED, else the summary plus the last output lines (e.g. a crash before the
  # server module could even report).
  @spec startup_error(map(), String.t(), integer() | nil) :: Error.t()
  def startup_error(state, summary, exit_status) do
    details = %{
      pool_name: state.pool_name,
      worker_id: state.id,
      exit_status: exit_status,
      reason: :startup_failed
    }

    case state.failure do
      %{} = payload ->
        type = payload["type"] || "Exception"
        message = payload["message"] || ""

        %Error{
          category: :worker,
          message: "Worker failed to start: #{type}: #{message}",
          details: Map.merge(details, %{exception_type: type, python_message: message}),
          python_traceback: payload["traceback"]
        }

      nil ->
        output = state.tail |> Enum.reverse() |> Enum.join("\n")

        %Error{
          category: :worker,
          message: "Worker failed to start: #{summary}",
          details: Map.put(details, :output, output),
          python_traceback: if(output != "", do: output)
        }
    end
  end
end
