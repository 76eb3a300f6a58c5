defmodule Snakepit.JSON do
  @moduledoc false
  # JSON for the few texts the Elixir side reads or writes itself: a worker's SNAKEPIT_READY /
  # SNAKEPIT_FAILED report, Python error payloads, bench results. The work is done in Rust
  # (serde_json, through the NIF) with the same value mapping as call arguments and results:
  # there is no Hex (no Jason) and no `JSON` module on Elixir 1.14. Objects decode to maps with
  # string keys, `null` to nil, integers of any size to integers.

  alias Snakepit.Native

  @spec decode(binary()) :: {:ok, term()} | {:error, String.t()}
  def decode(text) when is_binary(text), do: Native.json_decode(text)

  # `pretty: true` indents (two spaces) for people to read.
  @spec encode(term(), keyword()) :: {:ok, binary()} | {:error, {String.t(), String.t()}}
  def encode(term, opts \\ []), do: Native.json_encode(term, Keyword.get(opts, :pretty, false))
end
