defmodule Snakepit.Native do
  @moduledoc false
  # Stubs of the `snakepit_nif` crate (see docs/ARCHITECTURE.md, "NIF"). Every pool function
  # takes the pool resource returned by `pool_new/2` and never blocks: results of submitted
  # requests arrive as messages to the caller.
  #
  # The @on_load hook always returns :ok so that, when the library is missing, the module still
  # loads and each stub raises an error that says how to fix it (instead of the generic
  # "module Snakepit.Native is not available").

  require Logger

  @on_load :load_nif
  @loaded_key {__MODULE__, :loaded}

  @fix "run `mix compile` (needs cargo: https://rustup.rs) to build native/snakepit_nif " <>
         "into priv/native/libsnakepit_nif.so"

  defp load_nif do
    path = :filename.join(:code.priv_dir(:snakepit), ~c"native/libsnakepit_nif")

    case :erlang.load_nif(path, 0) do
      :ok ->
        :persistent_term.put(@loaded_key, true)

      {:error, {:reload, _}} ->
        :ok

      {:error, reason} ->
        :persistent_term.put(@loaded_key, false)

        # The Elixir compiler loads modules too; stay quiet there (the library may legitimately
        # not be built yet) and report when the application actually loads the module.
        unless Code.can_await_module_compilation?() do
          Logger.error("Snakepit NIF failed to load (#{inspect(reason)}): #{@fix}")
        end
    end

    :ok
  end

  @doc false
  @spec loaded?() :: boolean()
  def loaded?, do: :persistent_term.get(@loaded_key, false)

  @doc false
  @spec load_error_message() :: String.t()
  def load_error_message, do: "Snakepit NIF is not loaded: " <> @fix

  # -- pool lifecycle ----------------------------------------------------------------------------

  def pool_new(_config, _owner_pid), do: not_loaded()
  def pool_close(_pool), do: not_loaded()
  def pool_fail_queued(_pool), do: not_loaded()

  # -- workers -----------------------------------------------------------------------------------

  def pool_add_worker(_pool, _worker_id, _endpoint, _capacity), do: not_loaded()
  def pool_remove_worker(_pool, _worker_id, _reason), do: not_loaded()
  def pool_taint_worker(_pool, _worker_id, _duration_ms), do: not_loaded()

  # -- requests ----------------------------------------------------------------------------------

  def pool_submit(_pool, _ref, _command, _args, _opts), do: not_loaded()
  def pool_cancel(_pool, _request_id), do: not_loaded()
  def pool_stream_ack(_pool, _request_id, _n), do: not_loaded()

  # -- introspection and sessions ----------------------------------------------------------------

  def pool_stats(_pool), do: not_loaded()
  def pool_workers(_pool), do: not_loaded()
  def pool_delete_session(_pool, _session_id), do: not_loaded()

  # Optional (not in every NIF build): the worker a session is pinned to, or nil.
  def pool_session_worker(_pool, _session_id), do: not_loaded()

  # -- JSON (serde_json), for Snakepit.JSON -----------------------------------------------------

  def json_decode(_text), do: not_loaded()
  def json_encode(_term, _pretty), do: not_loaded()

  defp not_loaded, do: raise(RuntimeError, load_error_message())
end
