defmodule MLBridge.Transport.FrameTest do
  use ExUnit.Case, async: true

  alias MLBridge.Transport.Frame

  test "a header alone" do
    {:ok, iodata} = Frame.encode(%{"id" => 1, "op" => "list_bridges"})
    body = IO.iodata_to_binary(iodata)
    <<len::32-big, json::binary-size(len)>> = body
    assert MLBridge.JSON.decode(json) == {:ok, %{"id" => 1, "op" => "list_bridges"}}
    assert Frame.decode(body) == {:ok, %{"id" => 1, "op" => "list_bridges"}, []}
  end

  test "attachments follow the header in order, their sizes in it" do
    attachments = [{"b", <<0, 255, 1>>}, {"a", ""}, {"c", <<0xC3, 0x28>>}]
    {:ok, iodata} = Frame.encode(%{"id" => "x"}, attachments)
    body = IO.iodata_to_binary(iodata)
    assert String.ends_with?(body, <<0, 255, 1, 0xC3, 0x28>>)
    assert {:ok, %{"attachments" => [["b", 3], ["a", 0], ["c", 2]]}, ^attachments} = Frame.decode(body)
  end

  test "frames whose parts do not add up are refused" do
    {:ok, iodata} = Frame.encode(%{"id" => 1}, [{"a", "xyz"}])
    body = IO.iodata_to_binary(iodata)
    assert {:error, _} = Frame.decode(body <> "extra")
    assert {:error, _} = Frame.decode(binary_part(body, 0, byte_size(body) - 1))
    assert {:error, _} = Frame.decode(<<0, 0, 0, 50, "{}">>)
    assert {:error, _} = Frame.decode(<<0, 0, 0, 2, "[]">>)
    assert {:error, _} = Frame.decode(<<0, 0, 0, 21, ~s({"attachments": "no"})>>)
  end

  test "a header that is not JSON cannot be encoded" do
    assert {:error, _} = Frame.encode(%{"id" => 1, "args" => <<255>>})
  end
end
