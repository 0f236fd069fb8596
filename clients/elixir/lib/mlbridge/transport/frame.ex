defmodule MLBridge.Transport.Frame do
  @moduledoc """
  The body of a `mlbridge port --protocol mux` frame: a JSON header, then its
  attachments' raw bytes (docs/port-protocol.md):

      <<header_len::32-big, header::binary-size(header_len), blobs::binary>>

  When the header has `"attachments": [[name, size], ...]`, `blobs` is those
  attachments concatenated in that order. The outer 4-byte length of the
  frame is the Erlang port's `{:packet, 4}` framing and is not part of this.
  Pure functions: no process, no I/O.
  """

  alias MLBridge.JSON

  @typedoc "Attachments in wire order: name and bytes."
  @type attachments :: [{String.t(), binary()}]

  @doc """
  Encodes `header` (a map; `"attachments"` is filled in from `attachments`)
  and the attachments' bytes as iodata, without copying the blobs.
  """
  @spec encode(map(), attachments()) :: {:ok, iodata()} | {:error, String.t()}
  def encode(header, attachments \\ []) when is_map(header) and is_list(attachments) do
    header =
      case attachments do
        [] ->
          header

        _ ->
          Map.put(header, "attachments", Enum.map(attachments, fn {name, bin} -> [name, byte_size(bin)] end))
      end

    with {:ok, json} <- JSON.encode_to_binary(header) do
      {:ok, [<<byte_size(json)::32-big>>, json | Enum.map(attachments, &elem(&1, 1))]}
    end
  end

  @doc "Decodes a frame body into its header map and its attachments."
  @spec decode(binary()) :: {:ok, map(), attachments()} | {:error, String.t()}
  def decode(<<len::32-big, json::binary-size(len), blobs::binary>>) do
    with {:ok, %{} = header} <- JSON.decode(json),
         {:ok, attachments} <- split(Map.get(header, "attachments", []), blobs) do
      {:ok, header, attachments}
    else
      {:ok, other} -> {:error, "frame header is not a JSON object: #{inspect(other, limit: 5)}"}
      {:error, reason} -> {:error, reason}
    end
  end

  def decode(body), do: {:error, "frame of #{byte_size(body)} bytes is shorter than its header length"}

  defp split(specs, blobs) when is_list(specs), do: split(specs, blobs, [])
  defp split(other, _blobs), do: {:error, "frame attachments are not a list: #{inspect(other, limit: 5)}"}

  defp split([], "", acc), do: {:ok, Enum.reverse(acc)}
  defp split([], rest, _acc), do: {:error, "#{byte_size(rest)} bytes after the frame's attachments"}

  defp split([[name, size] | specs], blobs, acc)
       when is_binary(name) and is_integer(size) and size >= 0 and byte_size(blobs) >= size do
    <<blob::binary-size(size), rest::binary>> = blobs
    split(specs, rest, [{name, blob} | acc])
  end

  defp split([spec | _], blobs, _acc),
    do: {:error, "frame attachment #{inspect(spec)} does not fit the #{byte_size(blobs)} bytes left"}
end
