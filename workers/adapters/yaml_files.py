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


class _StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Mark] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<:` merges are resolved by the base loader
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:  # an unhashable key: the base loader reports it
                    continue
                if first is not key_node.start_mark:
                    raise DuplicateKey(str(key), first, key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def load_yaml(stream: IO[str] | str) -> Any:
    """yaml.safe_load, but a key given twice in one map is an error (DuplicateKey)."""
    return yaml.load(stream, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
