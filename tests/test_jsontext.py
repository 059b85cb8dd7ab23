"""Encoding and decoding stored JSON fast without losing integers beyond 64 bits."""

import pytest

from flespi_site.jsontext import dumps_exact, has_long_number, has_surrogate, loads_exact, unstorable


def test_integers_at_and_beyond_64_bits_stay_exact():
    for number in (2**63 - 1, 2**64 - 1, 2**64, -(2**64) - 1, 10**30):
        assert loads_exact(f'{{"n": {number}}}') == {"n": number}
        assert loads_exact(f"[{number}]".encode()) == [number]


def test_only_a_run_of_20_digits_counts_as_long():
    assert not has_long_number(b'{"a": 1234567890123456789, "b": "x"}')  # 19 digits
    assert has_long_number(b'{"a": 12345678901234567890}')
    assert has_long_number('{"s": "01234567890123456789"}')  # inside a string: harmless, slower path
    assert loads_exact('{"s": "01234567890123456789", "f": 0.5}') == {"s": "01234567890123456789", "f": 0.5}


def test_unstorable_names_what_no_store_accepts_at_any_depth():
    assert unstorable({"a": [1, 2.5, "text", {"é": None}], "b": True}) is None
    assert unstorable({"a": ["x\x00y"]}) == "NUL characters (\\u0000)"
    assert unstorable({"a": {"k\ud800": 1}}) == "surrogate characters (U+D800)"
    assert unstorable([{"a": float("nan")}]) == "non-finite numbers"
    assert unstorable("\udfff") == "surrogate characters (U+DFFF)"
    assert has_surrogate("\ud83d") and not has_surrogate("😀") and not has_surrogate("plain")


def test_the_exact_encoder_writes_compact_utf8_with_either_encoder():
    value = {"a": "é\u2028", "b": [1, 2.5, None, True], "c": {"q": '"\\'}}
    assert dumps_exact(value) == '{"a":"é\u2028","b":[1,2.5,null,true],"c":{"q":"\\"\\\\"}}'.encode()
    # an integer beyond 64 bits goes to the standard encoder, in the same form
    assert dumps_exact({**value, "n": 2**64}) == dumps_exact(value)[:-1] + b',"n":18446744073709551616}'
    for number in (2**64, -(2**64) - 1, 10**30):
        assert loads_exact(dumps_exact([number])) == [number]
    with pytest.raises(ValueError):
        dumps_exact([2**64, float("nan")])
