defmodule Snakepit.JSON do
  @moduledoc false
  # A small strict JSON decoder (RFC 8259) for the few JSON texts the Elixir side reads itself:
  # the worker's SNAKEPIT_READY / SNAKEPIT_FAILED lines and error messages. Request and result
  # values are converted by the NIF, not here. There is no Hex (no Jason) and no `JSON` module on
  # Elixir 1.14. Objects decode to maps with string keys, `null` to nil.

  @spec decode(binary()) :: {:ok, term()} | {:error, term()}
  def decode(text) when is_binary(text) do
    {value, rest} = value(skip_ws(text))

    case skip_ws(rest) do
      "" -> {:ok, value}
      other -> {:error, {:trailing_data, byte_size(text) - byte_size(other)}}
    end
  catch
    {:json_error, reason} -> {:error, reason}
  end

  defp value("{" <> rest), do: object(skip_ws(rest), %{})
  defp value("[" <> rest), do: array(skip_ws(rest), [])
  defp value("\"" <> rest), do: string(rest, [])
  defp value("true" <> rest), do: {true, rest}
  defp value("false" <> rest), do: {false, rest}
  defp value("null" <> rest), do: {nil, rest}
  defp value(<<c, _::binary>> = text) when c == ?- or c in ?0..?9, do: number(text)
  defp value(_), do: throw({:json_error, :unexpected_token})

  defp object("}" <> rest, acc), do: {acc, rest}

  defp object("\"" <> rest, acc) do
    {key, rest} = string(rest, [])

    case skip_ws(rest) do
      ":" <> rest ->
        {val, rest} = value(skip_ws(rest))
        acc = Map.put(acc, key, val)

        case skip_ws(rest) do
          "," <> rest -> object_key(skip_ws(rest), acc)
          "}" <> rest -> {acc, rest}
          _ -> throw({:json_error, :expected_comma_or_brace})
        end

      _ ->
        throw({:json_error, :expected_colon})
    end
  end

  defp object(_, _), do: throw({:json_error, :expected_key})

  defp object_key("\"" <> _ = text, acc), do: object(text, acc)
  defp object_key(_, _), do: throw({:json_error, :expected_key})

  defp array("]" <> rest, acc), do: {Enum.reverse(acc), rest}

  defp array(text, acc) do
    {val, rest} = value(text)

    case skip_ws(rest) do
      "," <> rest -> array_value(skip_ws(rest), [val | acc])
      "]" <> rest -> {Enum.reverse([val | acc]), rest}
      _ -> throw({:json_error, :expected_comma_or_bracket})
    end
  end

  defp array_value("]" <> _, _), do: throw({:json_error, :trailing_comma})
  defp array_value(text, acc), do: array(text, acc)

  defp string("\"" <> rest, acc), do: {IO.iodata_to_binary(Enum.reverse(acc)), rest}

  defp string("\\" <> <<esc, rest::binary>>, acc) do
    case esc do
      ?" -> string(rest, ["\"" | acc])
      ?\\ -> string(rest, ["\\" | acc])
      ?/ -> string(rest, ["/" | acc])
      ?b -> string(rest, ["\b" | acc])
      ?f -> string(rest, ["\f" | acc])
      ?n -> string(rest, ["\n" | acc])
      ?r -> string(rest, ["\r" | acc])
      ?t -> string(rest, ["\t" | acc])
      ?u -> unicode_escape(rest, acc)
      _ -> throw({:json_error, :invalid_escape})
    end
  end

  defp string(<<c, _::binary>>, _acc) when c < 0x20, do: throw({:json_error, :control_character})

  defp string(text, acc) do
    case :binary.match(text, ["\"", "\\"]) do
      {0, _} -> throw({:json_error, :unterminated_string})
      {pos, _} -> plain_run(text, pos, acc)
      :nomatch -> throw({:json_error, :unterminated_string})
    end
  end

  defp plain_run(text, pos, acc) do
    <<run::binary-size(pos), rest::binary>> = text

    if String.valid?(run) and not has_control?(run) do
      string(rest, [run | acc])
    else
      throw({:json_error, :invalid_string})
    end
  end

  defp has_control?(run), do: :binary.match(run, Enum.map(0..31, &<<&1>>)) != :nomatch

  # \uD83D\uDE00 style surrogate pairs combine into one code point.
  defp unicode_escape(<<hi::binary-size(4), "\\u", lo::binary-size(4), rest::binary>>, acc) do
    high = hex!(hi)
    low = hex!(lo)

    if high in 0xD800..0xDBFF and low in 0xDC00..0xDFFF do
      code = 0x10000 + Bitwise.bsl(high - 0xD800, 10) + (low - 0xDC00)
      string(rest, [<<code::utf8>> | acc])
    else
      string("\\u" <> lo <> rest, [codepoint!(high) | acc])
    end
  end

  defp unicode_escape(<<hex::binary-size(4), rest::binary>>, acc) do
    string(rest, [codepoint!(hex!(hex)) | acc])
  end

  defp unicode_escape(_, _), do: throw({:json_error, :invalid_unicode_escape})

  defp codepoint!(code) when code in 0xD800..0xDFFF, do: throw({:json_error, :lone_surrogate})
  defp codepoint!(code), do: <<code::utf8>>

  defp hex!(hex) do
    case Integer.parse(hex, 16) do
      {value, ""} -> value
      _ -> throw({:json_error, :invalid_unicode_escape})
    end
  end

  defp number(text) do
    case Regex.run(~r/\A-?(?:0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/, text) do
      [literal | parts] ->
        rest = binary_part(text, byte_size(literal), byte_size(text) - byte_size(literal))
        {to_number(literal, parts), rest}

      nil ->
        throw({:json_error, :invalid_number})
    end
  end

  defp to_number(literal, []), do: String.to_integer(literal)

  # Float.parse accepts "1e5" (no fraction), String.to_float would not.
  defp to_number(literal, _fraction_or_exponent) do
    {value, ""} = Float.parse(literal)
    value
  end

  defp skip_ws(<<c, rest::binary>>) when c in [?\s, ?\t, ?\n, ?\r], do: skip_ws(rest)
  defp skip_ws(text), do: text
end
