defmodule MLBridge.JSONTest do
  use ExUnit.Case, async: true

  alias MLBridge.JSON

  doctest MLBridge.JSON

  defp roundtrip(term) do
    {:ok, text} = JSON.encode_to_binary(term)
    JSON.decode(text)
  end

  test "round-trips every JSON type" do
    value = %{
      "null" => nil,
      "bools" => [true, false],
      "ints" => [0, -1, 123_456_789_012_345_678_901_234_567_890],
      "floats" => [1.5, -0.25, 1.0e-10, 6.02e23],
      "text" => "quote \" backslash \\ newline \n tab \t nul \u0000 é ✓ \u{1F600}",
      "nested" => %{"empty" => %{}, "list" => [[], [%{}]]}
    }

    assert roundtrip(value) == {:ok, value}
  end

  test "atoms become strings and keys may be atoms or integers" do
    assert {:ok, ~s({"a":"b"})} = JSON.encode_to_binary(%{a: :b})
    assert {:ok, ~s({"1":null})} = JSON.encode_to_binary(%{1 => nil})
  end

  test "control characters are escaped" do
    assert {:ok, ~s("\\u0001\\u001f\\r")} = JSON.encode_to_binary(<<1, 31, 13>>)
  end

  test "refuses what JSON cannot carry" do
    assert {:error, reason} = JSON.encode(<<0xFF, 0xFE>>)
    assert reason =~ "not UTF-8"
    assert {:error, _} = JSON.encode({:a, 1})
    assert {:error, _} = JSON.encode(%{{:k} => 1})
    assert {:error, reason} = JSON.encode(%{d: ~D[2024-01-01]})
    assert reason =~ "Date"
  end

  test "decodes escapes and surrogate pairs" do
    assert {:ok, "é😀/\b\f"} = JSON.decode(~s("\\u00e9\\ud83d\\ude00\\/\\b\\f"))
    assert {:ok, [1.0e5, -2, 0.5]} = JSON.decode(" [1e5, -2, 0.5] ")
  end

  test "rejects malformed input with a reason" do
    for bad <- [
          "",
          "{",
          "[1,]",
          ~s({"a" 1}),
          "01",
          "tru",
          ~s("abc),
          ~s("\\ud83d"),
          ~s("\\x"),
          "1 2",
          "1e400",
          "{1: 2}"
        ] do
      assert {:error, reason} = JSON.decode(bad), "#{inspect(bad)} decoded"
      assert is_binary(reason)
    end

    assert {:error, reason} = JSON.decode(<<?", 0xFF, ?">>)
    assert reason =~ "UTF-8"
  end
end
