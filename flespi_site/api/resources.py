"""Resources: an endpoint declares what it serves (a ``Resource``) and gets the API's behaviour.

- ``ResourceView``: ``POST`` a JSON array to the collection, ``GET|PUT|DELETE`` a selection
  (``all``, ids, ``field=value``; ``flespi_site.api.selection``), each item answered in one batch
  (``flespi_site.api.batch``), ``fields=`` projecting what is rendered.
- A child resource lives under a selection of its parent: it names the parent (``parent =
  CalcResource``) and its path below it (``url_path = "devices"``); its ``queryset`` reads
  ``self.parents``, the parent rows the path selected (a 404 naming the parent when none).
  ``/gw/calcs/{calculator_selector}/devices/{selector}`` is ``resource_paths`` of a view whose
  resource has ``parent = CalcResource``; a grandchild works the same way.
- ``SelectionView``: another method on a selection (``/gw/devices/{selector}/messages``,
  ``.../recalculate``): it names the resource (``selection_of``) and its ``url_path``, and reads
  ``self.selection()``.

In a path, the innermost selection is ``{selector}``; the outer ones are named by their resource
(``{calculator_selector}``). ``resource_paths`` and ``selection_path`` build the paths.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar

from django.db.models import Model, QuerySet
from django.urls import URLPattern, path
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import Account
from flespi_site.api.batch import batch_response, each_item, item_validation_errors
from flespi_site.api.params import ProjectionParameters, project, projection, query_params
from flespi_site.api.selection import SelectionField, is_id_list, names_ids, parse_selection
from flespi_site.api.views import FlespiAPIView, json_body
from flespi_site.errors import DomainError, InvalidInput, NotFound
from flespi_site.updates import locked_merge


class Resource(ABC):
    """What an endpoint serves: which rows an account sees, how they render, how they are
    created, updated and deleted (each through a service)."""

    name: ClassVar[str] = "item"
    # The collection's path ("gw/devices"); a child's, below its parent's selection ("devices").
    url_path: ClassVar[str]
    # The resource whose selection this one lives under, or None.
    parent: ClassVar[type[Resource] | None] = None
    selection_fields: ClassVar[dict[str, SelectionField]] = {"id": SelectionField("pk", "int")}
    # Every resource creates and updates (``create`` and ``update`` are abstract): it names the
    # serializers of their input.
    create_serializer: ClassVar[type[serializers.Serializer]]
    update_serializer: ClassVar[type[serializers.Serializer]]
    output_fields: ClassVar[tuple[str, ...]] = ("id",)
    # Fields answered only when ``fields=`` names them: computed for the answered rows at once
    # (``computed``), or flespi's fields with a fixed value here (None when they mean nothing on
    # this platform: a flespi client asks for them, and an unknown name stays a 400).
    computed_fields: ClassVar[tuple[str, ...]] = ()
    # JSON fields a PATCH merges into (flespi's deep merge); a resource without any takes no PATCH.
    merge_fields: ClassVar[tuple[str, ...]] = ()
    flespi_fields: ClassVar[dict[str, Any]] = {}
    max_batch: ClassVar[int] = 1000

    def __init__(self, view: FlespiAPIView, parents: Sequence[Model] = ()):
        self.view = view
        # The parent rows the path selected (a child resource's ``queryset`` reads them).
        self.parents = list(parents)

    @property
    def account(self) -> Account:
        return self.view.account

    @abstractmethod
    def queryset(self) -> QuerySet: ...

    @abstractmethod
    def render(self, obj: Model) -> dict: ...

    @abstractmethod
    def create(self, data: dict) -> Model: ...

    def create_many(self, items: list[dict]) -> list[Model | DomainError | serializers.ValidationError]:
        """``create`` each of a POSTed batch's valid items: each one's row, or the error refusing
        it. A resource that writes a batch at once (devices) says so here."""
        created: list[Model | DomainError | serializers.ValidationError] = []
        for item in items:
            try:
                created.append(self.create(item))
            except (DomainError, serializers.ValidationError) as exc:
                created.append(exc)
        return created

    @abstractmethod
    def update(self, obj: Model, data: dict) -> Model: ...

    @abstractmethod
    def delete(self, obj: Model) -> None: ...

    def updating(self, obj: Model, data: dict) -> AbstractContextManager:
        """What an update of ``obj`` must hold before its row is locked: a PATCH locks the row to
        merge into it before ``update`` runs, so a resource whose update service takes locks
        ahead of the row (devices and groups: their account's groups lock) takes them here.
        Nothing by default."""
        return nullcontext()

    def computed(self, objs: Sequence[Model], names: Collection[str]) -> dict[Any, dict]:
        """The ``computed_fields`` among ``names`` of each of ``objs``, by pk."""
        return {}

    @classmethod
    def answerable_fields(cls) -> tuple[str, ...]:
        """The names ``fields=`` may give."""
        return (*cls.output_fields, *cls.computed_fields, *cls.flespi_fields)

    def named(self, obj: Model) -> dict:
        """What names an item in the answer of a write on it (its result after a DELETE, its
        error in a batch): its id. A resource whose items are selected by another id says so."""
        return {"id": obj.pk}


def selector_kwarg(resource_class: type[Resource]) -> str:
    """The path parameter of a resource's selection when another selection follows it."""
    return f"{resource_class.name}_selector"


def collection_path(resource_class: type[Resource]) -> str:
    """The path of a resource's collection, below its parents' selections."""
    parent = resource_class.parent
    if parent is None:
        return resource_class.url_path
    return f"{collection_path(parent)}/<str:{selector_kwarg(parent)}>/{resource_class.url_path}"


def _parents_of(view: FlespiAPIView, resource_class: type[Resource]) -> list[Model]:
    parent = resource_class.parent
    return [] if parent is None else selected_rows(view, parent, kwarg=selector_kwarg(parent))


def selected_rows(view: FlespiAPIView, resource_class: type[Resource], *, kwarg: str = "selector") -> list[Model]:
    """The rows of ``resource_class`` that the path selects (parents first); a 404 naming the
    resource when there is none."""
    resource = resource_class(view, _parents_of(view, resource_class))
    selector = view.kwargs[kwarg]
    rows = list(resource.queryset().filter(parse_selection(selector, resource.selection_fields)))
    if not rows:
        raise NotFound(f"no {resource.name} matches {selector!r}")
    return rows


def selected_with_missing_ids(
    view: FlespiAPIView, resource_class: type[Resource], selector: str
) -> tuple[list[Model], list[NotFound]]:
    """The rows of ``resource_class`` that ``selector`` selects and, when it lists ids, a
    ``NotFound`` naming each id that selects nothing: a write on a selection of another resource
    (assigning the selected devices) goes on with the rows there are and answers the missing ids
    as errors. A selection of nothing at all is a 404."""
    resource = resource_class(view, _parents_of(view, resource_class))
    rows = list(resource.queryset().filter(parse_selection(selector, resource.selection_fields)))
    missing: list[NotFound] = []
    if is_id_list(selector):
        found = {row.pk for row in rows}
        listed = [int(part) for part in selector.split(",")]
        missing = [NotFound(f"no {resource.name} with id {pk}", id=pk) for pk in listed if pk not in found]
    if not rows and not missing:
        raise NotFound(f"no {resource.name} matches {selector!r}")
    return rows, missing


class ResourceView(FlespiAPIView):
    resource_class: ClassVar[type[Resource]]
    query_parameters = {
        "GET": ProjectionParameters, "POST": ProjectionParameters, "PUT": ProjectionParameters,
        "PATCH": ProjectionParameters,
    }

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        # A resource without JSON fields to merge takes no PATCH (a 405, not a merge of nothing).
        resource = getattr(cls, "resource_class", None)
        if resource is not None and not resource.merge_fields:
            cls.http_method_names = [name for name in cls.http_method_names if name != "patch"]

    def _resource(self) -> Resource:
        resource = getattr(self, "_resource_of_request", None)
        if resource is None:
            resource = self.resource_class(self, _parents_of(self, self.resource_class))
            self._resource_of_request = resource
        return resource

    def projected(self, request: Request) -> Callable[[Model], dict]:
        """How the answer shows an item: rendered by the resource, projected by the request's
        ``fields=``, which is read here (a bad one refuses the request before anything is
        written)."""
        many = self.projected_many(request)
        return lambda obj: many([obj])[0]

    def projected_many(self, request: Request) -> Callable[[Sequence[Model]], list[dict]]:
        """``projected`` for a list of items, with their computed fields read at once."""
        resource = self._resource()
        names = projection(query_params(request), resource.answerable_fields())
        if names is None:
            return lambda objs: [resource.render(obj) for obj in objs]
        computed = [name for name in names if name in resource.computed_fields]
        fixed = {name: resource.flespi_fields[name] for name in names if name in resource.flespi_fields}

        def answer(objs: Sequence[Model]) -> list[dict]:
            values = resource.computed(objs, computed) if computed else {}
            return [project({**resource.render(obj), **values.get(obj.pk, {}), **fixed}, names) for obj in objs]

        return answer

    def selected(self, selector: str | None) -> QuerySet:
        resource = self._resource()
        queryset = resource.queryset()
        if selector is not None:
            queryset = queryset.filter(parse_selection(selector, resource.selection_fields))
            if names_ids(selector) and not queryset.exists():
                # Ids the account cannot see do not exist for it.
                if is_id_list(selector):
                    raise NotFound(f"no {resource.name} with id {selector}")
                raise NotFound(f"no {resource.name} matches {selector!r}")
        return queryset

    def get(self, request: Request, selector: str | None = None, **parents: str) -> Response:
        answer = self.projected_many(request)
        rows = list(self.selected(selector or "all"))
        return Response({"result": answer(rows)})

    def post(self, request: Request, selector: str | None = None, **parents: str) -> Response:
        resource = self._resource()
        if selector is not None:
            raise InvalidInput(f"POST creates {resource.name}s: send it to the collection, without a selector")
        items = json_body(request)
        if not isinstance(items, list):
            raise InvalidInput(f"the body must be a JSON array of {resource.name}s to create")
        if len(items) > resource.max_batch:
            raise InvalidInput(f"at most {resource.max_batch} {resource.name}s per request")
        answer = self.projected_many(request)
        refused: dict[int, list[dict]] = {}  # index -> its errors
        valid: dict[int, dict] = {}  # index -> validated item
        for index, item in enumerate(items):
            serializer = resource.create_serializer(data=item)
            try:
                serializer.is_valid(raise_exception=True)
            except serializers.ValidationError as exc:
                refused[index] = item_validation_errors(exc, index=index)
                continue
            valid[index] = dict(serializer.validated_data)
        created = []
        for index, outcome in zip(valid, resource.create_many(list(valid.values())), strict=True):
            if isinstance(outcome, DomainError):
                outcome.index = index
                refused[index] = [outcome.as_error()]
            elif isinstance(outcome, serializers.ValidationError):
                refused[index] = item_validation_errors(outcome, index=index)
            else:
                created.append(outcome)
        errors = [error for index in sorted(refused) for error in refused[index]]
        return batch_response(answer(created), errors)

    def put(self, request: Request, selector: str | None = None, **parents: str) -> Response:
        resource = self._resource()
        if selector is None:
            raise InvalidInput(f"PUT updates selected {resource.name}s: add a selector to the path, like /all or /12")
        data = json_body(request)
        if not isinstance(data, dict):
            raise InvalidInput("the body must be a JSON object with the fields to change")
        serializer = resource.update_serializer(data=data, partial=True)
        serializer.is_valid(raise_exception=True)
        answer = self.projected(request)
        return self._each_selected(selector, lambda obj: answer(resource.update(obj, dict(serializer.validated_data))))

    def patch(self, request: Request, selector: str | None = None, **parents: str) -> Response:
        """Like PUT, with the JSON fields (``Resource.merge_fields``) merged deep into each item's
        stored values rather than replaced (``flespi_site.updates.merge_patch``)."""
        resource = self._resource()
        if selector is None:
            raise InvalidInput(f"PATCH updates selected {resource.name}s: add a selector to the path, like /all or /12")
        data = json_body(request)
        if not isinstance(data, dict):
            raise InvalidInput("the body must be a JSON object with the fields to change")
        serializer = resource.update_serializer(data=data, partial=True)
        serializer.is_valid(raise_exception=True)
        patch = {name: data[name] for name in serializer.validated_data}
        answer = self.projected(request)

        def merged(obj: Model) -> dict:
            with resource.updating(obj, patch), locked_merge(
                obj, patch, fields=resource.merge_fields, name=resource.name
            ) as changes:
                checked = resource.update_serializer(data=changes, partial=True)
                checked.is_valid(raise_exception=True)
                return answer(resource.update(obj, dict(checked.validated_data)))

        return self._each_selected(selector, merged)

    def delete(self, request: Request, selector: str | None = None, **parents: str) -> Response:
        resource = self._resource()
        if selector is None:
            raise InvalidInput(f"DELETE removes selected {resource.name}s: add a selector to the path")

        def delete(obj: Model) -> dict:
            named = resource.named(obj)  # a deleted row has no pk
            resource.delete(obj)
            return named

        return self._each_selected(selector, delete)

    def _each_selected(self, selector: str, write: Callable[[Model], dict]) -> Response:
        """``write`` each selected item, in one batch: an item it fails on is an error naming it
        (``Resource.named``); a selection of nothing is a 404."""
        resource = self._resource()
        objects = list(self.selected(selector))
        if not objects:
            raise NotFound(f"no {resource.name} matches {selector!r}")
        return each_item(objects, write, named=resource.named)


class SelectionView(FlespiAPIView):
    """A view on a selection of a resource, under ``<collection>/{selector}/<url_path>``."""

    selection_of: ClassVar[type[Resource]]
    url_path: ClassVar[str]

    def selection(self) -> list[Model]:
        """The rows the path selects, read once per request; a 404 when there is none."""
        rows = getattr(self, "_selection_of_request", None)
        if rows is None:
            rows = selected_rows(self, self.selection_of)
            self._selection_of_request = rows
        return rows


def resource_paths(view: type[ResourceView], name: str) -> list[URLPattern]:
    """The collection path and the selection path of a resource."""
    prefix = collection_path(view.resource_class)
    handler = view.as_view()
    return [
        path(prefix, handler, name=name),
        path(f"{prefix}/<str:selector>", handler, name=f"{name}-selected"),
    ]


def selection_path(view: type[SelectionView], name: str) -> URLPattern:
    """The path of a view on a selection: ``<collection>/{selector}/<url_path>``."""
    return path(f"{collection_path(view.selection_of)}/<str:selector>/{view.url_path}", view.as_view(), name=name)
