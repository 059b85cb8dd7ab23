import pytest

pytestmark = pytest.mark.django_db(databases="__all__")


def test_auth_info(make_account, make_token, api):
    account = make_account()
    key = make_token(account)
    response = api.call("GET", "/auth/info", key=key)
    assert response.status_code == 200, response.content
    assert response.json()["result"][0]["cid"] == account.pk
