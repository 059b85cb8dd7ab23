"""/platform and /auth."""

from __future__ import annotations

from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response

from accounts import selectors, services
from accounts.api.serializers import (
    AccountUpdateSerializer,
    SubaccountCreateSerializer,
    TokenCreateSerializer,
    TokenUpdateSerializer,
    validated_or_error,
)
from accounts.choices import AccessType
from accounts.models import Account, Token
from flespi_site.api.params import ProjectionParameters, project, projection, query_params
from flespi_site.api.permissions import IsMasterToken
from flespi_site.api.regions import Serving, region_of_regional_write
from flespi_site.api.resources import Resource, ResourceView
from flespi_site.api.selection import SelectionField
from flespi_site.api.views import FlespiAPIView, json_body
from flespi_site.errors import NotFound
from flespi_site.updates import locked_merge
from regions.selectors import regions_list

ACCOUNT_FIELDS = ("id", "cid", "name", "parent_id", "region", "datacenter", "depth", "metadata", "created")


# flespi's account fields answered when fields= names them: an account here is never blocked or
# disabled; it has no email, limits, counters or access log (null).
ACCOUNT_FLESPI_FIELDS = {
    "blocked": False,
    "enabled": True,
    **dict.fromkeys(("email", "limit_id", "counters", "accessed")),
}


def render_account(account: Account) -> dict:
    return {
        "id": account.pk,
        "cid": account.parent_id,  # flespi's cid of an account: the account it belongs to
        "name": account.name,
        "parent_id": account.parent_id,
        "region": account.region.code,
        "datacenter": account.datacenter.code,
        "depth": account.depth,
        "metadata": account.metadata,
        "created": account.created,
    }


def render_token(token: Token) -> dict:
    return {
        "id": token.pk,
        "info": token.info,
        "enabled": token.enabled,
        "expire": token.expire,
        "ttl": token.ttl,
        "access": {"type": token.access_type},
        "key_prefix": token.key_prefix,
        "created": token.created,
        "last_used": token.last_used,
        "cid": token.account_id,
    }


class RegionsView(FlespiAPIView):
    """``GET /auth/regions``: the regions and their endpoints; no token needed."""

    authentication_classes = []
    permission_classes = [AllowAny]
    acts_for_account = False

    def get(self, request: Request) -> Response:
        return Response({"result": regions_list()})


class AuthInfoView(FlespiAPIView):
    """``GET /auth/info``: the token and the account the request acts for."""

    def get(self, request: Request) -> Response:
        token = self.token
        return Response(
            {
                "result": [
                    {
                        "token": render_token(token),
                        "cid": self.account.pk,
                        "account": render_account(self.account),
                        "region": self.account.region.code,
                        # where this account's MQTT clients connect (docs/mqtt.md)
                        "mqtt": self.account.region.mqtt_url,
                        "access": {"type": token.access_type, "name": AccessType(token.access_type).label},
                    }
                ]
            }
        )


class CustomerView(FlespiAPIView):
    """``GET|PUT /platform/customer``: the acting account itself."""

    permission_classes = [IsMasterToken]
    query_parameters = {"GET": ProjectionParameters}

    def get(self, request: Request) -> Response:
        names = projection(query_params(request), (*ACCOUNT_FIELDS, *ACCOUNT_FLESPI_FIELDS))
        item = {**render_account(self.account), **ACCOUNT_FLESPI_FIELDS} if names else render_account(self.account)
        return Response({"result": [project(item, names)]})

    def put(self, request: Request) -> Response:
        data = validated_or_error(AccountUpdateSerializer, json_body(request), partial=True)
        account = services.account_update(account=self.account, data=data)
        return Response({"result": [render_account(account)]})

    def patch(self, request: Request) -> Response:
        """``PUT`` with ``metadata`` merged deep into the stored one (flespi's deep merge)."""
        body = json_body(request)
        data = validated_or_error(AccountUpdateSerializer, body, partial=True)
        with locked_merge(self.account, {name: body[name] for name in data}, fields=("metadata",), name="account") as changes:
            account = services.account_update(account=self.account, data=changes)
        return Response({"result": [render_account(account)]})


class SubaccountResource(Resource):
    name = "subaccount"
    url_path = "platform/subaccounts"
    selection_fields = {
        "id": SelectionField("pk", "int"),
        "cid": SelectionField("parent_id", "int"),  # flespi's cid of a subaccount: its parent
        "name": SelectionField("name", "str"),
        "parent_id": SelectionField("parent_id", "int"),
        "region": SelectionField("region__code", "str"),
        "datacenter": SelectionField("datacenter__code", "str"),
        "metadata": SelectionField("metadata", "json"),
    }
    create_serializer = SubaccountCreateSerializer
    update_serializer = AccountUpdateSerializer
    output_fields = ACCOUNT_FIELDS
    flespi_fields = ACCOUNT_FLESPI_FIELDS
    merge_fields = ("metadata",)

    def queryset(self):
        return selectors.subaccounts_of(account=self.account)

    def render(self, obj):
        return render_account(obj)

    def create(self, data):
        parent = self.account
        parent_id = data.get("parent_id")
        if parent_id is not None and parent_id != self.account.pk:
            parent = selectors.subaccounts_of(account=self.account).filter(pk=parent_id).first()
            if parent is None:
                raise NotFound(f"parent account {parent_id} not found", field="parent_id")
        return services.account_create(
            name=data["name"],
            parent=parent,
            region_code=data.get("region"),
            datacenter_code=data.get("datacenter"),
            metadata=data.get("metadata"),
        )

    def update(self, obj, data):
        return services.account_update(account=obj, data=data)

    def delete(self, obj):
        services.account_delete(account=obj)


class SubaccountsView(ResourceView):
    """``POST|GET|PUT|DELETE /platform/subaccounts[/{sel}]``."""

    permission_classes = [IsMasterToken]
    resource_class = SubaccountResource

    def region_to_serve(self, request: Request, account: Account) -> Serving:
        """A DELETE removes the regional data of the selected subaccounts."""
        own = super().region_to_serve(request, account)
        selector = self.kwargs.get("selector")
        if request.method != "DELETE" or selector is None:
            return own
        return region_of_regional_write(request, own, selectors.region_of(accounts=self.selected(selector)))


class TokenResource(Resource):
    name = "token"
    url_path = "platform/tokens"
    selection_fields = {
        "id": SelectionField("pk", "int"),
        "cid": SelectionField("account_id", "int"),
        "info": SelectionField("info", "str"),
        "enabled": SelectionField("enabled", "bool"),
    }
    create_serializer = TokenCreateSerializer
    update_serializer = TokenUpdateSerializer
    output_fields = (
        "id", "info", "enabled", "expire", "ttl", "access", "key", "key_prefix", "created", "last_used", "cid",
    )

    def queryset(self):
        return selectors.tokens_of(account=self.account)

    def render(self, obj):
        item = render_token(obj)
        key = getattr(obj, "_new_key", None)
        if key is not None:
            item["key"] = key
        return item

    def create(self, data):
        token, key = services.token_create(account=self.account, **_token_fields(data))
        token._new_key = key
        return token

    def update(self, obj, data):
        return services.token_update(token=obj, data=_token_fields(data))

    def delete(self, obj):
        services.token_delete(token=obj)


def _token_fields(data: dict) -> dict:
    fields = {name: data[name] for name in ("info", "enabled", "expire", "ttl") if name in data}
    if "access" in data:
        fields["access_type"] = data["access"].get("type", AccessType.STANDARD)
    return fields


class TokensView(ResourceView):
    """``POST|GET|PUT|DELETE /platform/tokens[/{sel}]``. The key is in the POST answer only."""

    permission_classes = [IsMasterToken]
    resource_class = TokenResource
