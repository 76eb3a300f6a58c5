defmodule Snakepit.Pool.Args do
  @moduledoc false
  # Structs in call arguments. The NIF encodes plain terms only and refuses structs; upstream
  # encoded arguments with Jason, so callers pass dates and decimals expecting Jason's
  # encoding. When a submit is refused because of a struct, the caller converts the arguments
  # with `convert/1` and submits again, so calls without structs pay nothing for this.
  #
  #   Date, Time, NaiveDateTime, DateTime -> ISO 8601 string (as Jason)
  #   Decimal                              -> string, Decimal.to_string/1 (as Jason)
  #   MapSet                               -> list of its (converted) elements
  #   any other struct                     -> left as is (the NIF names it in its error)

  @doc false
  # Whether a pool_submit refusal is about a struct.
  @spec struct_refusal?(term()) :: boolean()
  def struct_refusal?({:error, {:invalid_parameter, _path, "cannot encode struct " <> _}}),
    do: true

  def struct_refusal?(_), do: false

  @doc false
  @spec convert(term()) :: term()
  def convert(%Date{} = date), do: Date.to_iso8601(date)
  def convert(%Time{} = time), do: Time.to_iso8601(time)
  def convert(%NaiveDateTime{} = datetime), do: NaiveDateTime.to_iso8601(datetime)
  def convert(%DateTime{} = datetime), do: DateTime.to_iso8601(datetime)
  def convert(%MapSet{} = set), do: set |> MapSet.to_list() |> convert()
  # Decimal is not a dependency: called through a variable module.
  def convert(%{__struct__: Decimal} = decimal), do: decimal_module().to_string(decimal)
  def convert(%{__struct__: _} = other), do: other
  def convert(map) when is_map(map), do: Map.new(map, fn {k, v} -> {k, convert(v)} end)
  def convert(list) when is_list(list), do: convert_list(list)
  def convert(other), do: other

  # Keeps improper tails as they are (the NIF reports them).
  defp convert_list([head | tail]), do: [convert(head) | convert_list(tail)]
  defp convert_list(tail), do: tail

  defp decimal_module, do: Decimal
end
