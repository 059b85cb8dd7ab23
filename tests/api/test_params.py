"""Query parameters: plain text read as the declared type, ``data=`` JSON merged over them."""

from __future__ import annotations

import pytest
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from flespi_site.api import fields as strict
from flespi_site.api.params import validated_params
from flespi_site.errors import InvalidInput


class Params(strict.StrictSerializer):
    count = strict.StrictIntegerField(required=False, min_value=1)
    begin = strict.StrictFloatField(required=False)
    reverse = strict.StrictBooleanField(required=False)
    filter = strict.StrictCharField(required=False)


def params(query: str) -> dict:
    return validated_params(Request(APIRequestFactory().get("/x?" + query)), Params)


def test_plain_parameters_are_read_as_their_type():
    assert params("count=5&begin=1.5&reverse=true&filter=a") == {
        "count": 5,
        "begin": 1.5,
        "reverse": True,
        "filter": "a",
    }
    assert params("begin=-.5e3") == {"begin": -500.0}


def test_data_is_merged_over_plain_parameters():
    assert params("count=5&data=%7B%22count%22%3A7%2C%22reverse%22%3Afalse%7D") == {
        "count": 7,
        "reverse": False,
    }


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("count=abc", "query parameter count='abc' is not a valid integer"),
        ("count=1_000", "query parameter count='1_000' is not a valid integer"),
        ("count=%D9%A1", "query parameter count='\u0661' is not a valid integer"),
        ("count=%201", "query parameter count=' 1' is not a valid integer"),
        ("begin=nan", "query parameter begin='nan' is not a valid float"),
        ("begin=inf", "query parameter begin='inf' is not a valid float"),
        ("begin=1_0", "query parameter begin='1_0' is not a valid float"),
        ("reverse=yes", "query parameter reverse='yes' is not a valid boolean"),
    ],
)
def test_bad_plain_parameters(query, reason):
    with pytest.raises(InvalidInput) as excinfo:
        params(query)
    assert excinfo.value.reason == reason


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("count=0", {"count": ["Ensure this value is greater than or equal to 1."]}),
        ("data=%7B%22count%22%3A%225%22%7D", {"count": ["must be an integer"]}),
        ("other=1", {"other": ["unknown field"]}),
    ],
)
def test_parameters_are_validated(query, detail):
    from rest_framework.exceptions import ValidationError

    with pytest.raises(ValidationError) as excinfo:
        params(query)
    assert excinfo.value.detail == detail
