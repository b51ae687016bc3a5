"""The one-line docstring under each dataclass field: the text of a flag's --help and the docs."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap


def field_docs(cls) -> dict[str, str]:
    """{field name: its docstring} of a dataclass, its base classes' fields included."""
    docs = {}
    for klass in reversed(cls.__mro__[:-1]):  # a subclass's fields document themselves too
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, following in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)):
                docs[node.target.id] = following.value.value.strip()
    return docs
