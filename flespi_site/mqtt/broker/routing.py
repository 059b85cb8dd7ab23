"""Which subscriptions a topic reaches, and which retained messages a filter covers.

``Subscriptions`` is a tree of topic levels (``+`` and ``#`` are children like any other level),
so that routing a topic costs its depth, not the number of subscriptions. A filter level may list
alternatives separated by commas (``flespi/message/gw/devices/1,2``, as flespi allows): each
alternative is a branch of the tree that ends in the same subscription, and a topic that matches
several of them is delivered once.

Shared subscriptions (``$share/<group>/<filter>``) hang in the tree as a ``Group``, keyed by the
group's *owner* as well as its name: the broker makes the owner the subscribing account, so two
accounts that pick the same group name never share it.

``Retained`` keeps the last retained message of each topic in the same kind of tree, so that a
subscription finds its retained messages without scanning every topic.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Iterator
from typing import Any

MAX_ALTERNATIVES = 1_000  # the branches one filter may expand to
# first characters of topics that a wildcard in the first level does not match: '$' (MQTT's rule)
# and U+0000, which the broker puts before the topics of an account's own namespace
_HIDDEN = ("$", "\x00")


def filter_problem(topic_filter: str) -> str | None:
    """Why ``topic_filter`` is not a valid MQTT filter, or None."""
    if not topic_filter:
        return "an empty topic filter"
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return f"'#' must be a whole level and the last one in {topic_filter!r}"
        if "+" in level and level != "+":
            return f"'+' must be a whole level in {topic_filter!r}"
    return None


def topic_problem(topic: str) -> str | None:
    """Why ``topic`` cannot be published to, or None."""
    if not topic:
        return "an empty topic"
    if "+" in topic or "#" in topic:
        return f"a topic to publish to has no wildcards: {topic!r}"
    return None


def expand(topic_filter: str) -> list[str]:
    """The filters a filter with comma lists in its levels stands for (``a/1,2`` -> ``a/1``, ``a/2``)."""
    levels = [level.split(",") if "," in level else [level] for level in topic_filter.split("/")]
    count = 1
    for choices in levels:
        count *= len(choices)
        if count > MAX_ALTERNATIVES:
            raise ValueError(f"{topic_filter!r} lists more than {MAX_ALTERNATIVES} alternatives")
    expanded = ["/".join(combination) for combination in itertools.product(*levels)]
    return list(dict.fromkeys(expanded))


class Group:
    """The members of one shared subscription group; each message goes to one of them."""

    __slots__ = ("key", "members", "turn")

    def __init__(self, key: Hashable):
        self.key = key
        self.members: dict[str, Any] = {}  # session key -> subscription
        self.turn = 0

    def ordered(self) -> list[Any]:
        """The members, starting with the one whose turn it is (round robin)."""
        members = list(self.members.values())
        if not members:
            return members
        start = self.turn % len(members)
        self.turn += 1
        return members[start:] + members[:start]


class _Node:
    __slots__ = ("children", "groups", "subscribers")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.subscribers: dict[str, Any] = {}  # session key -> subscription
        self.groups: dict[Hashable, Group] = {}

    def empty(self) -> bool:
        return not (self.children or self.subscribers or self.groups)


class Subscriptions:
    """Every subscription of a broker, by the levels of its filter."""

    def __init__(self) -> None:
        self.root = _Node()

    def _path(self, branch: str, *, make: bool) -> list[_Node] | None:
        nodes = [self.root]
        for level in branch.split("/"):
            node = nodes[-1].children.get(level)
            if node is None:
                if not make:
                    return None
                node = nodes[-1].children[level] = _Node()
            nodes.append(node)
        return nodes

    def add(
        self, branches: list[str], session_key: str, subscription: Any, group: Hashable = None
    ) -> None:
        for branch in branches:
            nodes = self._path(branch, make=True)
            assert nodes is not None
            node = nodes[-1]
            if group is None:
                node.subscribers[session_key] = subscription
            else:
                shared = node.groups.get(group)
                if shared is None:
                    shared = node.groups[group] = Group(group)
                shared.members[session_key] = subscription

    def remove(self, branches: list[str], session_key: str, group: Hashable = None) -> None:
        for branch in branches:
            nodes = self._path(branch, make=False)
            if nodes is None:
                continue
            node = nodes[-1]
            if group is None:
                node.subscribers.pop(session_key, None)
            else:
                shared = node.groups.get(group)
                if shared is not None:
                    shared.members.pop(session_key, None)
                    if not shared.members:
                        del node.groups[group]
            levels = branch.split("/")
            for depth in range(len(levels), 0, -1):
                if not nodes[depth].empty():
                    break
                del nodes[depth - 1].children[levels[depth - 1]]

    def match(self, topic: str) -> tuple[list[tuple[str, Any]], list[Group]]:
        """The (session key, subscription) pairs and the groups whose filters match ``topic``.
        A session may appear more than once (overlapping filters): the caller merges."""
        levels = topic.split("/")
        found: list[tuple[str, Any]] = []
        groups: list[Group] = []
        # topics starting with '$' (or the broker's own namespace mark) are not matched by a
        # wildcard in the first level
        self._walk(self.root, levels, 0, found, groups, dollar=topic[:1] in _HIDDEN)
        return found, groups

    def _walk(
        self, node: _Node, levels: list[str], index: int, found: list, groups: list, dollar: bool
    ) -> None:
        children = node.children
        if not children:
            return
        wild = not (dollar and index == 0)
        if wild:
            rest = children.get("#")
            if rest is not None:
                found.extend(rest.subscribers.items())
                groups.extend(rest.groups.values())
        if index == len(levels):
            return
        last = index + 1 == len(levels)
        for child in (children.get(levels[index]), children.get("+") if wild else None):
            if child is None:
                continue
            if last:
                found.extend(child.subscribers.items())
                groups.extend(child.groups.values())
                rest = child.children.get("#")
                if rest is not None:  # 'a/#' matches 'a' too
                    found.extend(rest.subscribers.items())
                    groups.extend(rest.groups.values())
            else:
                self._walk(child, levels, index + 1, found, groups, dollar)


# the key of a node's own message in ``Retained``'s tree (levels are strings, so it never collides)
_MESSAGE = None


class Retained:
    """The last retained message of each topic, in a tree of levels."""

    def __init__(self) -> None:
        self.root: dict[Any, Any] = {}  # a node: children by level, its message under _MESSAGE
        self.count = 0

    def put(self, topic: str, message: Any) -> None:
        node = self.root
        for level in topic.split("/"):
            node = node.setdefault(level, {})
        if node.get(_MESSAGE) is None:
            self.count += 1
        node[_MESSAGE] = message

    def get(self, topic: str) -> Any:
        node: dict[Any, Any] | None = self.root
        for level in topic.split("/"):
            node = node.get(level) if node is not None else None
        return node.get(_MESSAGE) if node is not None else None

    def delete(self, topic: str) -> None:
        path = [self.root]
        levels = topic.split("/")
        for level in levels:
            node = path[-1].get(level)
            if node is None:
                return
            path.append(node)
        if path[-1].pop(_MESSAGE, None) is not None:
            self.count -= 1
        for depth in range(len(levels), 0, -1):
            if path[depth]:
                break
            del path[depth - 1][levels[depth - 1]]

    def matching(self, topic_filter: str) -> Iterator[Any]:
        """The retained messages whose topics ``topic_filter`` matches."""
        yield from self._walk(self.root, topic_filter.split("/"), 0, first=True)

    def _walk(self, node: dict, levels: list[str], index: int, *, first: bool) -> Iterator[Any]:
        if index == len(levels):
            message = node.get(_MESSAGE)
            if message is not None:
                yield message
            return
        level = levels[index]
        if level == "#":
            message = node.get(_MESSAGE)
            if message is not None:
                yield message  # 'a/#' matches 'a'
            yield from self._all(node, first=first)
            return
        if level == "+":
            for name, child in node.items():
                if name is _MESSAGE or (first and name[:1] in _HIDDEN):
                    continue
                yield from self._walk(child, levels, index + 1, first=False)
            return
        child = node.get(level)
        if child is not None:
            yield from self._walk(child, levels, index + 1, first=False)

    def _all(self, node: dict, *, first: bool) -> Iterator[Any]:
        for name, child in node.items():
            if name is _MESSAGE or (first and name[:1] in _HIDDEN):
                continue
            message = child.get(_MESSAGE)
            if message is not None:
                yield message
            yield from self._all(child, first=False)
