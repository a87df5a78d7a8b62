"""The pools file changed the way a person would change it: only the text of what changes is
touched. Comments, blank lines, key order, quoting, flow or block style and line breaks
everywhere else stay byte for byte.

PyYAML, the parser the workers read the file with, composes the text into nodes that know
where they start and end in it; each change is spliced into the text at those places:

- SetKey: a key's scalar value is replaced where it is written; a key a map does not have is
  added on a line of its own after the key it follows in a pool's usual order (a flow map
  `{...}` gets `, key: value` before its brace);
- AppendItem: an item is added after a list's last item, in the style of that item (a flow
  map `- {port-group: ..}` or a block map), or inside `[...]`;
- RemoveItem: an item's lines are deleted (a list left empty becomes `[]`); the comments
  above and below it stay.

Round-trip YAML libraries re-emit the whole file: ruamel.yaml, for one, joins a flow map
written over two lines into one, drops an anchor nothing refers to yet, and can misplace or
lose the comments next to an item it deletes. Splicing at the parser's marks has none of
that. Every result is read back and must equal the data with the changes made on it, or
nothing is written (`EditRefused`): a YAML alias (`*name`) where a change would land, a
dash on a line of its own, or a value inherited through a merge key (`<<:`) is refused, not
guessed at.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..core.errors import ConfigError
from .pools_file import read_pools_yaml
from .yaml_files import compose_yaml

Path = tuple[str | int, ...]

# the order a pool's keys are usually written in (examples/pools.yaml): a new key goes after
# the last key the map has that comes before it here
POOL_KEY_ORDER = (
    "name", "vcenter", "datacenter", "cluster", "datastore", "vcpus", "memory", "storage",
    "vcpu-overcommit", "exclude", "no-schedule", "pod", "labels", "region", "zone",
    "short-name", "resource-pool", "folder", "taints", "annotations", "networks",
)
NETWORK_KEY_ORDER = (
    "port-group", "vlan", "cidr", "gateway", "type", "slices", "pod", "netmask",
    "machine-network-cidr", "ip-addresses", "ipv6-cidr", "ipv6-start", "ipv6-gateway", "dns",
    "nameservers", "router", "datacenter",
)
ALIASED = "is a YAML alias (*name) of what is written elsewhere, or one others refer to"
_DASH = re.compile(r"[ \t]*-[ \t]+")
# from the end of a key (or the item before, or a list's `[`) to the end of an alias after it
_ALIAS = re.compile(r"\s*(?::|,|-|\[)?\s*\*[^\s,\[\]{}]+")
_LINE_REST = re.compile(r"[ \t]*(#[^\n]*)?(\r?\n|$)")


class EditRefused(Exception):
    """A change that is not made: `field` names what it is about. `bad_input`: the change
    asked for is wrong (else the file is written in a way not edited in place)."""

    def __init__(self, field: str, problem: str, bad_input: bool = True) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field
        self.problem = problem
        self.bad_input = bad_input


@dataclass(frozen=True)
class SetKey:
    """`key: value` in the map at `at`."""

    at: Path
    key: str
    value: Any
    shared: bool = False  # see Edit


@dataclass(frozen=True)
class AppendItem:
    """`item` at the end of the list under `key` of the map at `at` (the list is made when
    the map has no such key)."""

    at: Path
    key: str
    item: Any
    shared: bool = False  # see Edit


@dataclass(frozen=True)
class RemoveItem:
    """Item `index` of the list under `key` of the map at `at`."""

    at: Path
    key: str
    index: int
    shared: bool = False  # see Edit


# An edit changes what is written at its place. Where that is a YAML anchor other places refer
# to (`networks: &pod-a` in one pool, `networks: *pod-a` in others), it changes them all: an
# edit does that only when it says it is `shared` (made once for all of them; the caller has
# checked that it means every one), and only where the anchor is written.
Edit = SetKey | AppendItem | RemoveItem


def where(path: Path) -> str:
    """A path as a field name: pools[0].networks[2]."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def flow(value: Any) -> str:
    """`value` as YAML on one line, quoted where PyYAML would read it otherwise."""
    text = yaml.safe_dump([value], default_flow_style=True, sort_keys=False, width=1 << 30,
                          allow_unicode=True)
    return text.strip()[1:-1]


def apply_data(data: Any, edit: Edit) -> None:
    """The change made on loaded data (what the text must read as afterwards)."""
    target = data
    for part in edit.at:
        target = target[part]
    if isinstance(edit, SetKey):
        target[edit.key] = copy.deepcopy(edit.value)
    elif isinstance(edit, AppendItem):
        if target.get(edit.key) is None:
            target[edit.key] = []
        target[edit.key].append(copy.deepcopy(edit.item))
    else:
        del target[edit.key][edit.index]


def apply_edits(text: str, edits: Sequence[Edit], source: str) -> str:
    """The text with `edits` made, each where it is written. EditRefused when the result
    would not read as the data with the edits made (nothing is written then)."""
    expected = read_pools_yaml(text, source)
    for edit in edits:
        apply_data(expected, edit)
    out = text
    for edit in edits:
        out = _Splicer(out).apply(edit)
    try:
        same = read_pools_yaml(out, source) == expected
    except ConfigError as exc:
        raise EditRefused("", f"the change could not be made in place: the result would not "
                          f"read ({exc.message}); make it by hand", bad_input=False) from None
    if not same:
        raise EditRefused("", f"{source}: the change could not be made in place without "
                          "changing something else; make it by hand", bad_input=False)
    return out


class _Layout(Exception):
    """The text around a change is written in a way it is not spliced into."""


class _Splicer:
    def __init__(self, text: str) -> None:
        self.text = text
        self.newline = "\r\n" if "\r\n" in text else "\n"
        self.root = compose_yaml(text)
        self.seen: dict[int, int] = {}
        self._count(self.root)

    def _count(self, node: Node | None) -> None:
        """How often each node is referred to (an alias makes it more than once)."""
        if node is None:
            return
        self.seen[id(node)] = self.seen.get(id(node), 0) + 1
        if self.seen[id(node)] > 1:
            return
        if isinstance(node, MappingNode):
            for k, v in node.value:
                self._count(k)
                self._count(v)
        elif isinstance(node, SequenceNode):
            for v in node.value:
                self._count(v)

    def apply(self, edit: Edit) -> str:
        try:
            target = self._map(edit.at, edit.shared)
            if isinstance(edit, SetKey):
                return self._set(target, edit)
            if isinstance(edit, AppendItem):
                return self._append(target, edit)
            return self._remove(target, edit)
        except _Layout as exc:
            raise EditRefused(where((*edit.at, edit.key)), f"{exc}; make this change by hand",
                              bad_input=False) from None

    # -- finding -------------------------------------------------------------------------------
    def _shared(self, node: Node) -> bool:
        return self.seen.get(id(node), 0) > 1

    def _map(self, path: Path, shared: bool) -> MappingNode:
        node: Node | None = self.root
        for i, part in enumerate(path):
            if isinstance(node, MappingNode) and isinstance(part, str):
                pair = _own(node, part)
                node = pair[1] if pair else None
                if pair is not None:
                    self._own_value(pair[0], pair[1], where(path[:i + 1]), shared)
            elif isinstance(node, SequenceNode) and isinstance(part, int) \
                    and 0 <= part < len(node.value):
                node = node.value[part]
                if self._shared(node) and not shared:
                    raise _Layout(f"{where(path[:i + 1])} {ALIASED}")
            else:
                node = None
            if node is None:
                raise _Layout(f"{where(path[:i + 1])} is not written as a map or list of its "
                              "own (a merge key?)")
        if not isinstance(node, MappingNode):
            raise _Layout(f"{where(path)} is not a map")
        return node

    def _own_value(self, key: Node, value: Node, name: str, shared: bool) -> None:
        """Refuse to change a value that is not written here (an alias of one written
        elsewhere), or that other places refer to unless the change is meant for all."""
        if value.start_mark.index < key.end_mark.index or (self._shared(value) and not shared):
            raise _Layout(f"{name} {ALIASED}")

    def _end(self, node: Node, after: int) -> int:
        """Where the text of `node` ends (its last scalar or closing bracket). `after`: where
        it must start to be written here (an alias's node is written before, elsewhere)."""
        if node.start_mark.index < after:  # an alias: `*name` is written here
            alias = _ALIAS.match(self.text, after)
            if alias is None:
                raise _Layout("an alias (*name) is written there")
            return alias.end()
        if isinstance(node, ScalarNode) or node.flow_style:
            return node.end_mark.index
        if isinstance(node, MappingNode):
            key, value = node.value[-1]
            if _empty(value):
                return key.end_mark.index
            return self._end(value, key.end_mark.index)
        if isinstance(node, SequenceNode) and node.value:
            prev = node.start_mark.index
            for item in node.value:
                prev = self._end(item, prev) if not _empty(item) else prev
            return prev
        raise _Layout("an empty block list is written there")

    def _span(self, node: Node, after: int) -> tuple[int, int]:
        """Where `node` is written after `after`: its own text, or the `*name` of an alias."""
        if node.start_mark.index < after:
            alias = _ALIAS.match(self.text, after)
            if alias is None:
                raise _Layout("an alias (*name) is written there")
            return self.text.index("*", alias.start()), alias.end()
        return node.start_mark.index, self._end(node, after)

    def _line_end(self, index: int) -> int:
        """The start of the line after `index`'s (the text's end when it has none), when only
        blanks and a comment follow `index` on its line."""
        m = _LINE_REST.match(self.text, index)
        if m is None:
            raise _Layout("more text follows on the same line")
        return m.end()

    def _line_start(self, index: int) -> int:
        return self.text.rfind("\n", 0, index) + 1

    def _colon(self, key: Node) -> int:
        """Where the `:` after a key is."""
        at = self.text.find(":", key.end_mark.index)
        if at < 0:
            raise _Layout("no ':' after the key")
        return at

    def _splice(self, start: int, end: int, new: str) -> str:
        return self.text[:start] + new + self.text[end:]

    def _insert_line(self, after: int, line: str) -> str:
        """`line` as a line of its own after the line holding `after`."""
        at = self._line_end(after)
        text = self.text
        if at == len(text) and not text.endswith("\n"):
            text += self.newline
            at = len(text)
        return text[:at] + line + self.newline + text[at:]

    # -- changes -------------------------------------------------------------------------------
    def _set(self, m: MappingNode, edit: SetKey) -> str:
        pair = _own(m, edit.key)
        if pair is None:
            return self._add_key(m, edit.key, flow(edit.value))
        key, value = pair
        self._own_value(key, value, edit.key, edit.shared)
        if not isinstance(value, ScalarNode):
            raise _Layout(f"{edit.key} is not written as a single value")
        if _empty(value):
            colon = self._colon(key)
            return self._splice(colon + 1, colon + 1, " " + flow(edit.value))
        self._end(value, key.end_mark.index)
        if value.style in ("|", ">"):
            raise _Layout(f"{edit.key} is a block scalar")
        return self._splice(value.start_mark.index, value.end_mark.index, flow(edit.value))

    def _add_key(self, m: MappingNode, key: str, value: str) -> str:
        if m.flow_style:
            if m.value:
                last_key, last = m.value[-1]
                end = last_key.end_mark.index if _empty(last) else self._end(
                    last, last_key.end_mark.index)
                return self._splice(end, end, f", {key}: {value}")
            brace = self.text.find("{", m.start_mark.index)
            return self._splice(brace + 1, brace + 1, f"{key}: {value}")
        if not m.value:
            raise _Layout("an empty block map is written there")
        column = m.value[0][0].start_mark.column
        order = POOL_KEY_ORDER if "name" in _keys(m) else NETWORK_KEY_ORDER
        prev_key, prev_value = _predecessor(m, key, order)
        end = prev_key.end_mark.index if _empty(prev_value) else self._end(
            prev_value, prev_key.end_mark.index)
        sep = "" if value.startswith(self.newline) else " "  # a block value: on the next lines
        return self._insert_line(end, " " * column + f"{key}:{sep}{value}")

    def _append(self, m: MappingNode, edit: AppendItem) -> str:
        pair = _own(m, edit.key)
        item = flow(edit.item)
        if pair is None:
            if m.flow_style:
                return self._add_key(m, edit.key, f"[{item}]")
            # a block list under the new key, its dash two columns in
            column = m.value[0][0].start_mark.column if m.value else 0
            return self._add_key(m, edit.key, self.newline + " " * (column + 2) + "- " + item)
        key, seq = pair
        self._own_value(key, seq, edit.key, edit.shared)
        empty_list = isinstance(seq, SequenceNode) and seq.flow_style and not seq.value \
            and seq.start_mark.index >= key.end_mark.index
        if not m.flow_style and (_empty(seq) or empty_list):
            # `key:` or `key: []` in a block map: the item on a line of its own below it
            colon = self._colon(key)
            text = self.text
            if empty_list:
                start = colon + 1
                text = text[:start] + text[seq.end_mark.index:]
                self.text = text
            line = " " * (key.start_mark.column + 2) + "- " + item
            return self._insert_line(colon + 1, line)
        if _empty(seq):
            colon = self._colon(key)
            return self._splice(colon + 1, colon + 1, f" [{item}]")
        if not isinstance(seq, SequenceNode):
            raise _Layout(f"{edit.key} is not a list")
        if seq.flow_style:
            if not seq.value:
                close = seq.end_mark.index - 1
                return self._splice(close, close, item)
            end = self._end(seq, key.end_mark.index) - 1  # the `]`
            last_end = seq.start_mark.index
            for node in seq.value:
                last_end = self._span(node, last_end)[1]
            if self.text[last_end:end].strip():
                raise _Layout("unexpected text before ']'")
            return self._splice(last_end, last_end, f", {item}")
        last = seq.value[-1]
        after = seq.start_mark.index
        for node in seq.value:
            last_start, after = self._span(node, after)
        end = after
        line_start = self._line_start(last_start)
        dash = _DASH.match(self.text, line_start)
        if dash is None or dash.end() != last_start:
            raise _Layout("the list's last item does not start with '- ' on its line")
        indent = self.text[line_start:dash.end()]
        if isinstance(edit.item, dict) and isinstance(last, MappingNode) \
                and not last.flow_style and edit.item:
            # block style, as the items before it: each key under the first
            lines = []
            for i, (k, v) in enumerate(edit.item.items()):
                lead = indent if i == 0 else " " * len(indent)
                lines.append(f"{lead}{flow(k)}: {flow(v)}")
            return self._insert_line(end, self.newline.join(lines))
        return self._insert_line(end, indent + item)

    def _remove(self, m: MappingNode, edit: RemoveItem) -> str:
        pair = _own(m, edit.key)
        if pair is None or not isinstance(pair[1], SequenceNode):
            raise _Layout(f"{edit.key} is not a list written here")
        key, seq = pair
        self._own_value(key, seq, edit.key, edit.shared)
        items = seq.value
        spans: list[tuple[int, int]] = []
        after = seq.start_mark.index
        for item in items[:edit.index + 2]:  # the items up to the one after it
            spans.append(self._span(item, after))
            after = spans[-1][1]
        start, end = spans[edit.index]
        if seq.flow_style:
            if len(items) == 1:
                return self._splice(seq.start_mark.index, seq.end_mark.index, "[]")
            if edit.index == 0:
                return self._splice(start, spans[1][0], "")
            return self._splice(spans[edit.index - 1][1], end, "")
        line = self._line_start(start)
        dash = _DASH.match(self.text, line)
        if dash is None or dash.end() != start:
            raise _Layout("the item does not start with '- ' on its line")
        text = self._splice(line, self._line_end(end), "")
        if len(items) == 1:  # `networks:` with nothing under it would read as null
            colon = self._colon(key)
            text = text[:colon + 1] + " []" + text[colon + 1:]
        return text


def _own(m: MappingNode, key: str) -> tuple[Node, Node] | None:
    """The (key, value) nodes of `key` written in `m` itself (not inherited through `<<`)."""
    for k, v in m.value:
        if isinstance(k, ScalarNode) and k.tag != "tag:yaml.org,2002:merge" and k.value == key:
            return k, v
    return None


def _keys(m: MappingNode) -> list[str]:
    return [k.value for k, _ in m.value if isinstance(k, ScalarNode)]


def _empty(node: Node) -> bool:
    """A value written as nothing at all (`key:` then the line ends): null."""
    return isinstance(node, ScalarNode) and node.value == "" and node.style is None \
        and node.tag == "tag:yaml.org,2002:null"


def _predecessor(m: MappingNode, key: str, order: tuple[str, ...]) -> tuple[Node, Node]:
    """The pair a new `key` goes after: the last written key that comes before it in `order`
    (the last pair when none does)."""
    rank = {k: i for i, k in enumerate(order)}
    mine = rank.get(key, len(order))
    best: tuple[Node, Node] | None = None
    best_rank = -1
    for k, v in m.value:
        r = rank.get(k.value, -1) if isinstance(k, ScalarNode) else -1
        if best_rank <= r < mine:
            best, best_rank = (k, v), r
    if best is None:
        return m.value[-1]
    return best
