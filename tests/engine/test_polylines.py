"""Decoding many encoded polylines at once (``decode_polylines``, what exports use) gives, text by
text, the points of the reference decoder (``decode_polyline``): routes the engine writes, texts
cut short anywhere, texts that are no polyline (any character, non-ASCII too, runs of chunks
longer than a coordinate's), and empty texts."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from analytics.engine.geo import decode_polyline, decode_polylines, encode_polyline

_points = st.lists(
    st.tuples(
        st.floats(min_value=-90, max_value=90, allow_nan=False),
        st.floats(min_value=-180, max_value=180, allow_nan=False),
    ),
    max_size=12,
)


@st.composite
def polyline_texts(draw):
    """A route as the engine encodes it, whole or cut at any character, or any text at all."""
    kind = draw(st.sampled_from(["route", "cut", "text", "long run"]))
    if kind == "text":
        return draw(st.text(max_size=16))
    if kind == "long run":
        return draw(st.text(alphabet="_`abz~", min_size=6, max_size=14)) + draw(st.text(alphabet="?@AZ^", max_size=3))
    text = encode_polyline(draw(_points))
    return text[: draw(st.integers(0, len(text)))] if kind == "cut" else text


def _split(texts: list[str]) -> list[list[tuple[float, float]]]:
    lat, lon, offsets = decode_polylines(texts)
    assert len(offsets) == len(texts) + 1 and offsets[0] == 0 and offsets[-1] == len(lat) == len(lon)
    return [
        list(zip(lat[start:end].tolist(), lon[start:end].tolist(), strict=True))
        for start, end in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)
    ]


# No deadline: the first example pays for numpy's first calls.
@settings(deadline=None, max_examples=500)
@given(st.lists(polyline_texts(), max_size=8))
def test_bulk_decoding_equals_the_reference_decoder_text_by_text(texts):
    assert _split(texts) == [decode_polyline(text) for text in texts]


def test_bulk_decoding_of_known_polylines():
    # Google's example, a cut copy of it (the last latitude has no longitude), nothing, a value of
    # more chunks than any coordinate has (its integer needs the reference decoder), non-ASCII.
    google = "_p~iF~ps|U_ulLnnqC_mqNvxq`@"
    assert _split([google, google[:-3], "", "~~~~~~~~~~?A", "é?"]) == [
        [(38.5, -120.2), (40.7, -120.95), (43.252, -126.453)],
        [(38.5, -120.2), (40.7, -120.95)],
        [],
        [(-5629499534.21312, 1e-05)],
        [],
    ]
