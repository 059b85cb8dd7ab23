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
