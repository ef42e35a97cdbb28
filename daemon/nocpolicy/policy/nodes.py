"""YAML parsed into located nodes, so that every error can name file:line and a field path.

A :class:`Node` wraps one YAML value: ``value`` is a ``dict[str, Node]``, a
``list[Node]`` or a plain scalar (str, int, float, bool, None, date/datetime).
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml


@dataclass(frozen=True, slots=True)
class Loc:
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line > 0 else self.file


@dataclass(frozen=True, slots=True)
class Problem:
    """One validation problem, printed as ``file:line: path.to.field: reason``."""

    loc: Loc
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.loc}: {self.path or '(top)'}: {self.reason}"


class Node:
    __slots__ = ("value", "loc", "path", "key_loc")

    def __init__(self, value, loc: Loc, path: str, key_loc: Loc | None = None):
        self.value = value
        self.loc = loc              # where the value starts
        self.path = path
        self.key_loc = key_loc or loc   # where its key is (a block value starts on the next line)

    def __repr__(self) -> str:
        return f"Node({self.value!r} @ {self.loc} {self.path})"

    def plain(self):
        """The value with every nested Node unwrapped (for hashing or echoing back)."""
        if isinstance(self.value, dict):
            return {k: v.plain() for k, v in self.value.items()}
        if isinstance(self.value, list):
            return [v.plain() for v in self.value]
        return self.value


def child_path(parent: str, key) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else str(key)


def parse_yaml(text: str, file: str, problems: list[Problem]) -> Node | None:
    """Parse one YAML document into a Node tree; syntax errors and duplicate keys go to problems."""
    try:
        try:
            # libyaml's parser (PyYAML wheels ship it) composes ~5x faster, same nodes and marks...
            loader, root = _compose(getattr(yaml, "CSafeLoader", yaml.SafeLoader), text)
        except yaml.YAMLError:
            # ...but the pure-Python parser words syntax errors better.
            loader, root = _compose(yaml.SafeLoader, text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        reason = f"YAML syntax error: {exc.problem or exc}"
        if exc.context:
            reason += f" ({exc.context})"
        problems.append(Problem(Loc(file, line), "", reason))
        return None
    except yaml.YAMLError as exc:
        problems.append(Problem(Loc(file, 1), "", f"YAML error: {exc}"))
        return None
    if root is None:
        return Node({}, Loc(file, 1), "")
    refused = alias_budget(root, MAX_ALIAS_NODES)
    if refused is not None:
        line, reason = refused
        problems.append(Problem(Loc(file, line), "", reason))
        return None
    try:
        return _convert(root, file, "", loader, problems)
    except RecursionError:
        problems.append(Problem(Loc(file, root.start_mark.line + 1), "",
                                "YAML nests too deeply (a recursive alias?)"))
        return None


# Aliases may add at most this many nodes to a file once expanded. A file without
# aliases has no limit here (its size is its cost); a "billion laughs" of a few
# hundred bytes is refused before anything is expanded.
MAX_ALIAS_NODES = 100_000


def _children(ynode) -> list:
    if isinstance(ynode, yaml.MappingNode):
        return [n for pair in ynode.value for n in pair]
    if isinstance(ynode, yaml.SequenceNode):
        return list(ynode.value)
    return []


def alias_budget(root, budget: int) -> tuple[int, str] | None:
    """(line, reason) if expanding the aliases of the composed graph ``root`` would add
    more than ``budget`` nodes, or if an alias refers to its own ancestor; else None.

    Walks the graph once, each node once (sizes memoised), so the cost is that of the
    file as written, not of its expansion."""
    size: dict[int, int] = {}            # id(node) -> nodes once expanded (finished nodes)
    open_ = {id(root)}                   # the current path: a child on it is a cycle
    stack = [(root, iter(_children(root)))]
    running = [1]
    extra = 0
    while stack:
        node, it = stack[-1]
        child = next(it, None)
        if child is None:
            stack.pop()
            open_.discard(id(node))
            n = running.pop()
            size[id(node)] = n
            if running:
                running[-1] += n
            continue
        line = node.start_mark.line + 1
        if id(child) in open_:
            return line, "a YAML alias refers to a node that contains it (a recursive alias)"
        if id(child) in size:            # a second reference: an alias
            extra += size[id(child)]
            running[-1] += size[id(child)]
            if extra > budget:
                return line, (f"YAML aliases here expand the file by more than {budget} nodes "
                              "(an alias bomb?); refused before expanding them")
            continue
        open_.add(id(child))
        stack.append((child, iter(_children(child))))
        running.append(1)
    return None


def _compose(loader_class, text: str):
    loader = loader_class(text)
    try:
        return loader, loader.get_single_node()
    finally:
        loader.dispose()


def _convert(ynode, file, path, loader, problems) -> Node:
    loc = Loc(file, ynode.start_mark.line + 1)
    if isinstance(ynode, yaml.MappingNode):
        merged = _flatten_merges(ynode, file, loader, problems)
        out: dict[str, Node] = {}
        from_merge: set[str] = set()
        for i, (knode, vnode) in enumerate(ynode.value):
            key = loader.construct_object(knode, deep=True) if isinstance(knode, yaml.ScalarNode) else None
            kloc = Loc(file, knode.start_mark.line + 1)
            if not isinstance(key, (str, int, float, bool)):
                problems.append(Problem(kloc, path, "mapping keys must be plain scalars"))
                continue
            key = str(key) if not isinstance(key, bool) else str(key).lower()
            if key in out and key not in from_merge:   # a key may override one merged in with <<
                problems.append(Problem(kloc, child_path(path, key),
                                        f"duplicate key (first at line {out[key].key_loc.line})"))
                continue
            from_merge.discard(key)
            if i < merged:
                from_merge.add(key)
            out[key] = _convert(vnode, file, child_path(path, key), loader, problems)
            out[key].key_loc = kloc
        return Node(out, loc, path)
    if isinstance(ynode, yaml.SequenceNode):
        return Node(
            [_convert(item, file, child_path(path, i), loader, problems) for i, item in enumerate(ynode.value)],
            loc,
            path,
        )
    try:
        value = loader.construct_object(ynode, deep=True)
    except yaml.YAMLError as exc:
        problems.append(Problem(loc, path, f"bad scalar: {exc}"))
        value = None
    return Node(value, loc, path)


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _flatten_merges(ynode, file, loader, problems) -> int:
    """Apply ``<<: *anchor`` merge keys in place; returns how many leading pairs came from merges."""
    done = getattr(ynode, "_nocpolicy_merged", None)
    if done is not None:          # an aliased mapping seen before
        return done
    keys = [k for k, _ in ynode.value]
    merged = 0
    if any(k.tag == _MERGE_TAG for k in keys):
        own = sum(1 for k in keys if k.tag != _MERGE_TAG)
        try:
            loader.flatten_mapping(ynode)
            merged = len(ynode.value) - own
        except yaml.MarkedYAMLError as exc:
            line = exc.problem_mark.line + 1 if exc.problem_mark else ynode.start_mark.line + 1
            problems.append(Problem(Loc(file, line), "", f"bad YAML merge (<<): {exc.problem}"))
            ynode.value = [(k, v) for k, v in ynode.value if k.tag != _MERGE_TAG]
    ynode._nocpolicy_merged = merged
    return merged


def from_plain(value, path: str = "", file: str = "<request>") -> Node:
    """Wrap JSON-like data (an API or MQTT payload) so the same field readers validate it."""
    loc = Loc(file, 1)
    if isinstance(value, dict):
        return Node({str(k): from_plain(v, child_path(path, str(k)), file) for k, v in value.items()}, loc, path)
    if isinstance(value, list):
        return Node([from_plain(v, child_path(path, i), file) for i, v in enumerate(value)], loc, path)
    return Node(value, loc, path)
