"""A child resource is declared, not written: a parent, a path below the parent's selection and
a queryset over ``self.parents`` give it the whole POST/GET/PUT/DELETE behaviour."""

from __future__ import annotations

import pytest

from accounts.models import Token
from flespi_site.api.resources import collection_path
from tests.api.child_urls import SubaccountTokenResource, TokenCountView
from tests.support.api import errors_of, result_of

pytestmark = [pytest.mark.django_db(databases="__all__"), pytest.mark.urls("tests.api.child_urls")]


@pytest.fixture
def tree(root, make_account, make_token):
    first, second = make_account("first", parent=root), make_account("second", parent=root)
    make_token(first, info="a1"), make_token(first, info="a2"), make_token(second, info="b1")
    return first, second


def test_the_paths_name_the_parent_selection():
    assert collection_path(SubaccountTokenResource) == "platform/subaccounts/<str:subaccount_selector>/tokens"
    assert TokenCountView.url_path == "count"


def test_a_child_lists_and_selects_only_under_its_parents(api, root_key, tree):
    first, _second = tree
    listed = result_of(api.call("GET", f"/platform/subaccounts/{first.pk}/tokens", key=root_key))
    assert [item["info"] for item in listed] == ["a1", "a2"]
    both = result_of(api.call("GET", "/platform/subaccounts/name=*/tokens/info=*1?fields=info", key=root_key))
    assert both == [{"info": "a1"}, {"info": "b1"}]
    b1 = Token.objects.get(info="b1")
    errors = errors_of(api.call("GET", f"/platform/subaccounts/{first.pk}/tokens/{b1.pk}", key=root_key), 404)
    assert errors[0]["reason"] == f"no token with id {b1.pk}"


def test_a_parent_selection_that_matches_nothing_is_a_404_naming_the_parent(api, root_key, tree):
    errors = errors_of(api.call("GET", "/platform/subaccounts/name=nobody/tokens", key=root_key), 404)
    assert errors[0]["reason"] == "no subaccount matches 'name=nobody'"
    assert not errors_of(api.call("DELETE", "/platform/subaccounts/name=nobody/tokens/all", key=root_key), 404)[0].get("id")
    assert Token.objects.count() == 4


def test_a_child_updates_and_deletes_under_its_parents(api, root_key, tree):
    first, second = tree
    updated = result_of(api.call("PUT", f"/platform/subaccounts/{first.pk}/tokens/all", key=root_key, body={"enabled": False}))
    assert len(updated) == 2
    assert sorted(Token.objects.filter(enabled=False).values_list("info", flat=True)) == ["a1", "a2"]
    result_of(api.call("DELETE", f"/platform/subaccounts/{second.pk}/tokens/all", key=root_key))
    assert sorted(Token.objects.values_list("info", flat=True)) == ["", "a1", "a2"]


def test_a_view_on_a_child_selection_reads_the_selected_rows(api, root_key, tree):
    first, _second = tree
    assert result_of(api.call("GET", f"/platform/subaccounts/{first.pk}/tokens/all/count", key=root_key)) == [{"count": 2}]
    errors = errors_of(api.call("GET", f"/platform/subaccounts/{first.pk}/tokens/info=zz/count", key=root_key), 404)
    assert errors[0]["reason"] == "no token matches 'info=zz'"
