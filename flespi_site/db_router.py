"""Database router: control models go to the control database, regional models to the
datacenter of their account.

A regional model declares ``regional = True`` on the class. Reads and writes of regional rows must
name their database, which the placement helpers do (``accounts.placement``); the router only
resolves the database from a row's ``account_id`` when Django passes the row as a hint, and
refuses to guess otherwise: a regional query that reaches the control database would be a silent
data leak, so it fails loudly instead.
"""

from __future__ import annotations

from django.conf import settings

from accounts.placement import alias_for_account


class PlacementError(RuntimeError):
    """A regional query did not say which datacenter it runs on."""


def is_regional(model) -> bool:
    return bool(getattr(model, "regional", False))


def _regional_aliases() -> set[str]:
    return {dc.alias for dc in settings.TOPOLOGY.datacenters}


class PlacementRouter:
    def _route(self, model, hints):
        if not is_regional(model):
            return "default"
        instance = hints.get("instance")
        if instance is not None:
            if instance._state.db in _regional_aliases():
                return instance._state.db
            account_id = getattr(instance, "account_id", None)
            if account_id is not None:
                return alias_for_account(account_id)
        raise PlacementError(
            f"{model._meta.label} is a regional model: query it with "
            "accounts.placement.using_account(...) or .using(<datacenter alias>)"
        )

    def db_for_read(self, model, **hints):
        return self._route(model, hints)

    def db_for_write(self, model, **hints):
        return self._route(model, hints)

    def allow_relation(self, obj1, obj2, **hints):
        return obj1._state.db == obj2._state.db

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        regional_alias = db in _regional_aliases()
        model = hints.get("model")
        if model_name is None and model is not None:
            model_name = model._meta.model_name
        if model_name is not None:
            # Migrations pass historical models, which lack class attributes: ask the live one.
            from django.apps import apps

            try:
                return is_regional(apps.get_model(app_label, model_name)) == regional_alias
            except LookupError:
                pass
        # RunSQL/RunPython without a model say where they belong with the hint
        # ``target="regional"``; by default they run on the control database only.
        target = hints.get("target", "control")
        return (target == "regional") == regional_alias
