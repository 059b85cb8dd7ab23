import pytest


@pytest.fixture
def account(make_account):
    return make_account("fleet")


@pytest.fixture
def key(account, make_token):
    return make_token(account)


@pytest.fixture
def device(account):
    from devices.services import device_create

    return device_create(account=account, name="truck 1", configuration={"ident": "352625690000001"})
