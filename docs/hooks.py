"""MkDocs hook: the reference pages written from the code, so they cannot drift from it.

``<!-- generated: spec -->`` becomes a table per part of the spec, from the pydantic models' fields and their
``Field(description=...)``; ``<!-- generated: status -->`` the same for ``.status``; ``<!-- generated: cli -->``
the usage and help of every ``tratree`` command, from the argument parser itself.
"""

from __future__ import annotations

import argparse
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is None:
        return getattr(annotation, "__name__", str(annotation)).replace("NoneType", "null")
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    name = getattr(origin, "__name__", str(origin))
    if name in ("Union", "UnionType"):
        return " \\| ".join(_type_name(a) for a in args)
    return f"{name}[{', '.join(_type_name(a) for a in args)}]"


def _models(root: type[BaseModel]) -> list[type[BaseModel]]:
    """``root`` and every model its fields hold, each once, in the order they are met."""
    seen: list[type[BaseModel]] = []

    def visit(model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.append(model)
        for field in model.model_fields.values():
            stack = [field.annotation]
            while stack:
                t = stack.pop()
                if isinstance(t, type) and issubclass(t, BaseModel):
                    visit(t)
                stack.extend(typing.get_args(t))

    visit(root)
    return seen


def _default(field: Any) -> str:
    if field.default_factory is not None:
        return "(computed)"
    if field.default is PydanticUndefined:
        return "required"
    return f"`{field.default!r}`" if field.default is not None else ""


def models_reference(root: type[BaseModel], path: str) -> str:
    """A section per model: its docstring and a table of its fields (name as written in YAML, type, default, what)."""
    out = []
    for model in _models(root):
        out.append(f"### `{model.__name__}`\n")
        if model.__doc__:
            out.append(model.__doc__.strip().split("\n\n")[0] + "\n")
        out.append("| field | type | default | what it is |\n|---|---|---|---|")
        for name, field in model.model_fields.items():
            alias = field.alias or name
            what = (field.description or "").replace("|", "\\|").replace("\n", " ")
            out.append(f"| `{alias}` | {_type_name(field.annotation)} | {_default(field)} | {what} |")
        out.append("")
    return f"The fields of `{path}`, from the models in the code.\n\n" + "\n".join(out)


def cli_reference() -> str:
    """Every command's usage and help, as ``tratree COMMAND --help`` prints them."""
    from tratree.cli import build_parser

    out = []

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            out.append(f"### `{name}`\n\n```text\n{parser.format_help().strip()}\n```\n")
            return
        for action in subs:
            for sub_name, sub in action.choices.items():
                walk(sub, f"{name} {sub_name}")

    parser = build_parser()
    parser.prog = "tratree"
    walk(parser, "tratree")
    return "\n".join(out)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if "<!-- generated: spec -->" in markdown:
        from tratree.spec.experiment import ExperimentSpec

        markdown = markdown.replace("<!-- generated: spec -->", models_reference(ExperimentSpec, ".spec"))
    if "<!-- generated: status -->" in markdown:
        from tratree.spec.status import ExperimentStatus

        markdown = markdown.replace("<!-- generated: status -->", models_reference(ExperimentStatus, ".status"))
    if "<!-- generated: cli -->" in markdown:
        markdown = markdown.replace("<!-- generated: cli -->", cli_reference())
    return markdown
