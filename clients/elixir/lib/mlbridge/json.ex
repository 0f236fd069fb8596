defmodule MLBridge.JSON do
  @moduledoc """
  The JSON codec of the wire headers and payloads (RFC 8259).

  The library has no Hex dependencies, and OTP 25 has no JSON module, so it
  carries this small codec instead of relying on a system package: Debian's
  `erlang-jiffy` is a NIF that exists on few other installs, encodes `nil` as
  the string `"nil"` and raises on input it cannot encode, where this codec
  maps `nil` to `null` and answers `{:error, reason}`.

  Encoding: maps (atom, string or integer keys) become objects, lists arrays,
  binaries strings (they must be UTF-8: bytes travel as attachments), atoms
  strings (`nil`, `true`, `false` as JSON's literals), integers and floats
  numbers. Tuples, pids, structs and other terms are refused.

  Decoding: objects become maps with string keys, `null` becomes `nil`,
  integers stay integers and numbers with a fraction or exponent become
  floats.
  """

  @typedoc "A decoded JSON value."
  @type value :: nil | boolean() | number() | String.t() | [value()] | %{optional(String.t()) => value()}

  @whitespace [?\s, ?\t, ?\n, ?\r]

  @doc """
  Encodes `term` as JSON text (iodata).

      iex> MLBridge.JSON.encode(%{"a" => [1, nil, true]}) |> elem(1) |> IO.iodata_to_binary()
      ~s({"a":[1,null,true]})
  """
  @spec encode(term()) :: {:ok, iodata()} | {:error, String.t()}
  def encode(term) do
    {:ok, value(term)}
  catch
    {:json_encode, reason} -> {:error, reason}
  end

  @doc "Like `encode/1`, returning a binary."
  @spec encode_to_binary(term()) :: {:ok, binary()} | {:error, String.t()}
  def encode_to_binary(term) do
    with {:ok, iodata} <- encode(term), do: {:ok, IO.iodata_to_binary(iodata)}
  end

  @doc """
  Decodes one JSON document, surrounded by optional whitespace.

      iex> MLBridge.JSON.decode(~s({"a": [1, 2.5, null, "\\\\u00e9"]}))
      {:ok, %{"a" => [1, 2.5, nil, "é"]}}
  """
  @spec decode(binary()) :: {:ok, value()} | {:error, String.t()}
  def decode(text) when is_binary(text) do
    case parse_value(skip(text)) do
      {value, rest} ->
        case skip(rest) do
          "" -> {:ok, value}
          extra -> {:error, "unexpected data after the JSON value: #{preview(extra)}"}
        end
    end
  catch
    {:json_decode, reason} -> {:error, reason}
  end

  # -- encoding ------------------------------------------------------------------------------

  defp value(nil), do: "null"
  defp value(true), do: "true"
  defp value(false), do: "false"
  defp value(atom) when is_atom(atom), do: string(Atom.to_string(atom))
  defp value(int) when is_integer(int), do: Integer.to_string(int)
  defp value(float) when is_float(float), do: :erlang.float_to_binary(float, [:short])
  defp value(bin) when is_binary(bin), do: string(bin)
  defp value(list) when is_list(list), do: [?[, list |> Enum.map(&value/1) |> Enum.intersperse(?,), ?]]

  defp value(%{__struct__: module}),
    do: throw({:json_encode, "cannot encode a #{inspect(module)} struct as JSON; pass a map"})

  defp value(map) when is_map(map) do
    members = Enum.map(map, fn {k, v} -> [key(k), ?:, value(v)] end)
    [?{, Enum.intersperse(members, ?,), ?}]
  end

  defp value(other), do: throw({:json_encode, "cannot encode #{inspect(other)} as JSON"})

  defp key(k) when is_binary(k), do: string(k)
  defp key(k) when is_atom(k) and k not in [nil, true, false], do: string(Atom.to_string(k))
  defp key(k) when is_integer(k), do: string(Integer.to_string(k))
  defp key(k), do: throw({:json_encode, "cannot use #{inspect(k)} as a JSON object key"})

  defp string(bin) do
    if String.valid?(bin) do
      [?", escape(bin, bin, 0, 0, []), ?"]
    else
      throw({:json_encode, "#{preview(bin)} is not UTF-8 text; send bytes as an attachment"})
    end
  end

  # Copies runs of bytes that need no escape as sub-binaries of the original.
  defp escape(<<>>, orig, start, len, acc), do: [acc | binary_part(orig, start, len)]

  defp escape(<<c, rest::binary>>, orig, start, len, acc) when c < 0x20 or c == ?" or c == ?\\ do
    acc = [acc, binary_part(orig, start, len) | escape_char(c)]
    escape(rest, orig, start + len + 1, 0, acc)
  end

  defp escape(<<_, rest::binary>>, orig, start, len, acc), do: escape(rest, orig, start, len + 1, acc)

  defp escape_char(?"), do: "\\\""
  defp escape_char(?\\), do: "\\\\"
  defp escape_char(?\n), do: "\\n"
  defp escape_char(?\r), do: "\\r"
  defp escape_char(?\t), do: "\\t"
  defp escape_char(c), do: ["\\u00", Base.encode16(<<c>>, case: :lower)]

  # -- decoding ------------------------------------------------------------------------------

  defp skip(<<c, rest::binary>>) when c in @whitespace, do: skip(rest)
  defp skip(rest), do: rest

  defp parse_value(<<"null", rest::binary>>), do: {nil, rest}
  defp parse_value(<<"true", rest::binary>>), do: {true, rest}
  defp parse_value(<<"false", rest::binary>>), do: {false, rest}
  defp parse_value(<<?", rest::binary>>), do: parse_string(rest, [])
  defp parse_value(<<?[, rest::binary>>), do: parse_array(skip(rest), [])
  defp parse_value(<<?{, rest::binary>>), do: parse_object(skip(rest), [])
  defp parse_value(<<c, _::binary>> = text) when c == ?- or c in ?0..?9, do: parse_number(text)
  defp parse_value(""), do: fail("unexpected end of JSON input")
  defp parse_value(text), do: fail("unexpected JSON input at #{preview(text)}")

  defp parse_array(<<?], rest::binary>>, []), do: {[], rest}

  defp parse_array(text, acc) do
    {value, rest} = parse_value(text)

    case skip(rest) do
      <<?,, rest::binary>> -> parse_array(skip(rest), [value | acc])
      <<?], rest::binary>> -> {Enum.reverse([value | acc]), rest}
      other -> fail("expected , or ] in an array at #{preview(other)}")
    end
  end

  defp parse_object(<<?}, rest::binary>>, []), do: {%{}, rest}

  defp parse_object(<<?", rest::binary>>, acc) do
    {key, rest} = parse_string(rest, [])

    {value, rest} =
      case skip(rest) do
        <<?:, rest::binary>> -> parse_value(skip(rest))
        other -> fail("expected : after an object key at #{preview(other)}")
      end

    acc = [{key, value} | acc]

    case skip(rest) do
      <<?,, rest::binary>> -> parse_object(skip(rest), acc)
      <<?}, rest::binary>> -> {Map.new(Enum.reverse(acc)), rest}
      other -> fail("expected , or } in an object at #{preview(other)}")
    end
  end

  defp parse_object(text, _acc), do: fail("expected an object key at #{preview(text)}")

  defp parse_string(text, acc) do
    case :binary.match(text, ["\"", "\\"]) do
      {pos, 1} ->
        <<chunk::binary-size(pos), mark, rest::binary>> = text

        if mark == ?" do
          string = IO.iodata_to_binary([acc | chunk])
          if String.valid?(string), do: {string, rest}, else: fail("a JSON string is not UTF-8")
        else
          {char, rest} = unescape(rest)
          parse_string(rest, [acc, chunk | char])
        end

      :nomatch ->
        fail("unterminated JSON string")
    end
  end

  defp unescape(<<?", rest::binary>>), do: {"\"", rest}
  defp unescape(<<?\\, rest::binary>>), do: {"\\", rest}
  defp unescape(<<?/, rest::binary>>), do: {"/", rest}
  defp unescape(<<?b, rest::binary>>), do: {"\b", rest}
  defp unescape(<<?f, rest::binary>>), do: {"\f", rest}
  defp unescape(<<?n, rest::binary>>), do: {"\n", rest}
  defp unescape(<<?r, rest::binary>>), do: {"\r", rest}
  defp unescape(<<?t, rest::binary>>), do: {"\t", rest}

  defp unescape(<<?u, hex::binary-size(4), rest::binary>>) do
    case hex4(hex) do
      high when high in 0xD800..0xDBFF ->
        with <<"\\u", low_hex::binary-size(4), rest2::binary>> <- rest,
             low when low in 0xDC00..0xDFFF <- hex4(low_hex) do
          {<<0x10000 + (high - 0xD800) * 0x400 + (low - 0xDC00)::utf8>>, rest2}
        else
          _ -> fail("unpaired UTF-16 surrogate \\u#{hex} in a JSON string")
        end

      low when low in 0xDC00..0xDFFF ->
        fail("unpaired UTF-16 surrogate \\u#{hex} in a JSON string")

      code ->
        {<<code::utf8>>, rest}
    end
  end

  defp unescape(text), do: fail("bad escape in a JSON string at \\#{preview(text)}")

  defp hex4(hex) do
    case Integer.parse(hex, 16) do
      {code, ""} -> code
      _ -> fail("bad \\u escape #{inspect(hex)} in a JSON string")
    end
  end

  defp parse_number(text) do
    {int, rest} = number_part(text, ~r/\A-?(0|[1-9][0-9]*)/)
    {frac, rest} = number_part(rest, ~r/\A\.[0-9]+/)
    {exp, rest} = number_part(rest, ~r/\A[eE][+-]?[0-9]+/)

    cond do
      int == "" ->
        fail("bad JSON number at #{preview(text)}")

      frac == "" and exp == "" ->
        {String.to_integer(int), rest}

      true ->
        mantissa = int <> if(frac == "", do: ".0", else: frac)

        try do
          {:erlang.binary_to_float(mantissa <> exp), rest}
        rescue
          ArgumentError -> fail("JSON number #{int}#{frac}#{exp} is out of range")
        end
    end
  end

  defp number_part(text, regex) do
    case Regex.run(regex, text, return: :index, capture: :first) do
      [{0, len}] -> {binary_part(text, 0, len), binary_part(text, len, byte_size(text) - len)}
      nil -> {"", text}
    end
  end

  defp preview(text) when byte_size(text) > 24, do: inspect(binary_part(text, 0, 24)) <> "..."
  defp preview(text), do: inspect(text)

  @spec fail(String.t()) :: no_return()
  defp fail(reason), do: throw({:json_decode, reason})
end
