"""Decoding stored JSON fast without losing integers beyond 64 bits."""

from flespi_site.jsontext import has_long_number, loads_exact


def test_integers_at_and_beyond_64_bits_stay_exact():
    for number in (2**63 - 1, 2**64 - 1, 2**64, -(2**64) - 1, 10**30):
        assert loads_exact(f'{{"n": {number}}}') == {"n": number}
        assert loads_exact(f"[{number}]".encode()) == [number]


def test_only_a_run_of_20_digits_counts_as_long():
    assert not has_long_number(b'{"a": 1234567890123456789, "b": "x"}')  # 19 digits
    assert has_long_number(b'{"a": 12345678901234567890}')
    assert has_long_number('{"s": "01234567890123456789"}')  # inside a string: harmless, slower path
    assert loads_exact('{"s": "01234567890123456789", "f": 0.5}') == {"s": "01234567890123456789", "f": 0.5}
