"""Reads of accounts and tokens, always scoped to what an account may see."""

from __future__ import annotations

from django.db.models import QuerySet

from accounts.models import Account, Token


def subaccounts_of(*, account: Account) -> QuerySet[Account]:
    """Every descendant of ``account`` (not the account itself)."""
    return Account.objects.filter(path__startswith=account.path).exclude(pk=account.pk).select_related(
        "region", "datacenter"
    )


def tokens_of(*, account: Account) -> QuerySet[Token]:
    return Token.objects.filter(account=account)


def region_of(*, accounts: QuerySet[Account]) -> tuple[str, int] | None:
    """The region of ``accounts`` and one of them, when they all live in one region (their
    subaccounts live there too: only a first-level subaccount chooses its region); else None."""
    rows = list(accounts.order_by().values_list("region__code", "pk")[:1000])
    if not rows or len({code for code, _pk in rows}) != 1 or len(rows) == 1000:
        return None
    return rows[0]
