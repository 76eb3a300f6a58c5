defmodule Snakepit.Pool.Options do
  @moduledoc false
  # Turns the caller's keyword options into the NIF `opts` map of pool_submit/5
  # (docs/ARCHITECTURE.md): session_id, affinity, timeout_ms, binary_parameters, metadata,
  # stream, stream_window. Pure, so it is unit tested without a pool.

  alias Snakepit.Config

  @stream_window 16

  @doc false
  @spec pool_name(keyword()) :: atom() | String.t()
  def pool_name(opts) do
    case Keyword.get(opts, :pool_name) do
      nil -> pool_from_server_option(Keyword.get(opts, :pool))
      name -> name
    end
  end

  # `pool:` is upstream's pool *server* (`Snakepit.Pool`, the default). Any other atom is taken
  # as a pool name, so an unknown one gives :pool_not_found instead of silently using the
  # default pool (upstream exited with :noproc).
  defp pool_from_server_option(pool) when is_atom(pool) and pool not in [nil, Snakepit.Pool],
    do: pool

  defp pool_from_server_option(_), do: Snakepit.Pool.default_pool()

  @doc false
  # The tool name: a UTF-8 string (an atom is taken by name, as Python sees names).
  @spec command(term()) :: {:ok, String.t()} | {:error, term()}
  def command(command) when is_binary(command) do
    if String.valid?(command) and command != "",
      do: {:ok, command},
      else: {:error, {:invalid_parameter, :command, command}}
  end

  def command(command) when is_atom(command) and command not in [nil, true, false],
    do: {:ok, Atom.to_string(command)}

  def command(command), do: {:error, {:invalid_parameter, :command, command}}

  @doc false
  # Keyword lists are accepted as args for convenience; the NIF reports invalid values by path.
  # A struct is not an argument map: its fields (and `__struct__`) would become arguments.
  @spec args(term()) :: {:ok, map()} | {:error, term()}
  def args(%_{}), do: {:error, {:invalid_parameter, :args, :not_a_map}}
  def args(args) when is_map(args), do: {:ok, args}
  def args([]), do: {:ok, %{}}

  def args(args) when is_list(args) do
    if Keyword.keyword?(args),
      do: {:ok, Map.new(args)},
      else: {:error, {:invalid_parameter, :args, :not_a_map}}
  end

  def args(_), do: {:error, {:invalid_parameter, :args, :not_a_map}}

  @doc false
  # Returns the args with `correlation_id` removed (it travels as request metadata, as upstream)
  # and the NIF opts map.
  @spec build(map(), keyword(), timeout(), boolean()) :: {:ok, map(), map()} | {:error, term()}
  def build(args, opts, timeout, stream?) do
    {arg_correlation, args} = pop_correlation_id(args)

    with {:ok, binaries} <- binary_parameters(Keyword.get(opts, :binary_parameters, %{})),
         {:ok, session_id} <- session_id(Keyword.get(opts, :session_id)),
         {:ok, window} <- stream_window(Keyword.get(opts, :stream_window, @stream_window)) do
      correlation_id =
        Keyword.get(opts, :correlation_id) || arg_correlation || generate_correlation_id()

      metadata =
        %{"correlation_id" => to_string(correlation_id)}
        |> put_thread_sensitive(Keyword.get(opts, :thread_sensitive, false))

      nif_opts = %{
        session_id: session_id,
        affinity: Config.parse_affinity(Keyword.get(opts, :affinity)),
        timeout_ms: timeout,
        binary_parameters: binaries,
        metadata: metadata,
        stream: stream?,
        stream_window: window
      }

      {:ok, args, nif_opts}
    end
  end

  defp pop_correlation_id(args) do
    {atom_value, args} = Map.pop(args, :correlation_id)
    {string_value, args} = Map.pop(args, "correlation_id")
    {atom_value || string_value, args}
  end

  defp binary_parameters(params) when is_map(params) or is_list(params) do
    Enum.reduce_while(params, {:ok, %{}}, fn
      {key, value}, {:ok, acc} when is_binary(value) and (is_binary(key) or is_atom(key)) ->
        {:cont, {:ok, Map.put(acc, to_string(key), value)}}

      {key, _value}, _acc ->
        {:halt, {:error, {:invalid_parameter, key, :not_binary}}}

      other, _acc ->
        {:halt, {:error, {:invalid_parameter, :binary_parameters, other}}}
    end)
  end

  defp binary_parameters(nil), do: {:ok, %{}}
  defp binary_parameters(other), do: {:error, {:invalid_parameter, :binary_parameters, other}}

  defp stream_window(n) when is_integer(n) and n > 0, do: {:ok, n}
  defp stream_window(other), do: {:error, {:invalid_parameter, :stream_window, other}}

  defp session_id(nil), do: {:ok, nil}

  defp session_id(id) when is_binary(id) do
    if String.valid?(id), do: {:ok, id}, else: {:error, {:invalid_parameter, :session_id, id}}
  end

  defp session_id(id) when is_atom(id) or is_integer(id), do: {:ok, to_string(id)}
  defp session_id(id), do: {:error, {:invalid_parameter, :session_id, id}}

  defp put_thread_sensitive(metadata, flag) when flag in [true, "true"],
    do: Map.put(metadata, "thread_sensitive", "true")

  defp put_thread_sensitive(metadata, _), do: metadata

  # A random UUID v4 string; upstream generates one per request.
  defp generate_correlation_id do
    <<a::48, _::4, b::12, _::2, c::62>> = :rand.bytes(16)
    <<u0::32, u1::16, u2::16, u3::16, u4::48>> = <<a::48, 4::4, b::12, 2::2, c::62>>

    [u0, u1, u2, u3, u4]
    |> Enum.zip([8, 4, 4, 4, 12])
    |> Enum.map_join("-", fn {v, width} ->
      v |> Integer.to_string(16) |> String.downcase() |> String.pad_leading(width, "0")
    end)
  end
end
