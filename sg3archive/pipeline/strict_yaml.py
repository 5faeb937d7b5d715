"""Read job manifests as plain data, with no surprises: YAML 1.2's core types only.

PyYAML follows YAML 1.1, where ``yes``/``no``/``on``/``off`` are booleans, ``010`` is octal,
``1:30`` is 90 and ``2026-01-01`` a date, so ``profile: yes`` would quietly become 1 bit per
layer. Here only ``true``/``false`` are booleans, integers are decimal, and everything else that
is not a number or null stays a string for the job's own validation to judge. Anchors, aliases
and merge keys are refused (an alias can expand a small file into an enormous document), as are
duplicate keys (PyYAML silently keeps the last) and files larger than :data:`MAX_MANIFEST_BYTES`.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode

MAX_MANIFEST_BYTES = 1 << 20
MAX_DEPTH = 16  # job settings nest two levels (thresholds, storage options' client_kwargs)
MAX_INT_DIGITS = 30  # beyond any count, size or seed a job takes (seeds are < 2**63: 19 digits)

_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_DROPPED = {_BOOL, _INT, _FLOAT, "tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:merge"}


class StrictYAMLError(ValueError):
    """A manifest uses a YAML feature a job manifest may not (the message says which, and where)."""


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}" if mark is not None else "the file"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core scalars, no anchors/aliases/merge keys, no duplicate keys."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise StrictYAMLError(f"{_where(event.start_mark)}: anchors and aliases (&name, *name) are not allowed "
                                  "in a job manifest; write the value out")
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                raise StrictYAMLError(f"{_where(event.start_mark)}: values are nested more than {MAX_DEPTH} deep; "
                                      "a job manifest is a few flat settings")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                raise ConstructorError(None, None, "a key must be a plain value", key_node.start_mark) from None
            if duplicate:
                raise StrictYAMLError(f"{_where(key_node.start_mark)}: key {key!r} appears twice; keep one")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_decimal_int(self, node: yaml.ScalarNode) -> int:
        text = self.construct_scalar(node)
        if len(text.lstrip("+-")) > MAX_INT_DIGITS:
            raise StrictYAMLError(f"{_where(node.start_mark)}: a number of {len(text)} digits; no setting takes one "
                                  f"longer than {MAX_INT_DIGITS}")
        return int(text)


_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _DROPPED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_StrictLoader.add_implicit_resolver(_INT, re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789"))
_StrictLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)
_StrictLoader.add_constructor(_INT, _StrictLoader.construct_decimal_int)


def load_strict_yaml(text: str) -> Any:
    """Parse one manifest document with the rules above.

    Raises:
        StrictYAMLError: an anchor, alias or duplicate key, or a text over the size limit.
        yaml.YAMLError: the text is not valid YAML.
    """
    if len(text) > MAX_MANIFEST_BYTES:
        raise StrictYAMLError(f"it is larger than {MAX_MANIFEST_BYTES >> 20} MiB; a job manifest is a few settings")
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
