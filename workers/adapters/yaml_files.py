"""YAML files written by people (the pools file, `vcm reserve`'s requests): safe loading that
refuses a key given twice in one map. PyYAML keeps the last one silently, so a pool whose
`vcpus` was edited in a second place would run with whichever came last."""

from __future__ import annotations

from typing import IO, Any

import yaml


class DuplicateKey(yaml.constructor.ConstructorError):
    """A map names the same key twice; `key` is the key, the marks say where."""

    def __init__(self, key: str, first: yaml.Mark, again: yaml.Mark) -> None:
        super().__init__(None, None, f"key {key!r} is given twice in one map (line "
                         f"{first.line + 1}, again at line {again.line + 1})", again)
        self.key = key


MERGE = "tag:yaml.org,2002:merge"  # `<<:`
VALUE = "tag:yaml.org,2002:value"  # a key spelled `=`


class _StrictLoader(yaml.SafeLoader):
    def compose_mapping_node(self, anchor: str | None) -> yaml.MappingNode:
        # checked as written: later, merges (`<<: *base` then an override) are folded into
        # the node in place, and a valid override would look like a key given twice
        node = super().compose_mapping_node(anchor)
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == MERGE:
                continue
            if key_node.tag == VALUE:
                key: Any = "="
            elif isinstance(key_node, yaml.ScalarNode):
                key = self.construct_object(key_node)
            else:
                continue  # a complex key: the constructor reports what it must
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: the constructor reports it
                continue
            if first is not key_node.start_mark:
                raise DuplicateKey(str(key), first, key_node.start_mark)
        return node


def load_yaml(stream: IO[str] | str) -> Any:
    """yaml.safe_load, but a key given twice in one map is an error (DuplicateKey)."""
    return yaml.load(stream, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


def compose_yaml(text: str) -> yaml.Node | None:
    """The node graph of a document (where each value is written), read as load_yaml reads it
    (a key given twice is DuplicateKey)."""
    return yaml.compose(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
