"""A child resource and a view on its selection, declared as an endpoint of the analytics part
would be: the tokens of selected subaccounts (``test_resources.py``)."""

from rest_framework.response import Response

from accounts.api.views import SubaccountResource, TokenResource
from accounts.models import Token
from flespi_site.api.permissions import IsMasterToken
from flespi_site.api.resources import ResourceView, SelectionView, resource_paths, selection_path


class SubaccountTokenResource(TokenResource):
    parent = SubaccountResource
    url_path = "tokens"

    def queryset(self):
        return Token.objects.filter(account__in=self.parents).order_by("id")


class SubaccountTokensView(ResourceView):
    permission_classes = [IsMasterToken]
    resource_class = SubaccountTokenResource


class TokenCountView(SelectionView):
    permission_classes = [IsMasterToken]
    selection_of = SubaccountTokenResource
    url_path = "count"

    def get(self, request, **path):
        return Response({"result": [{"count": len(self.selection())}]})


urlpatterns = [
    *resource_paths(SubaccountTokensView, "subaccount-tokens"),
    selection_path(TokenCountView, "subaccount-token-count"),
]
