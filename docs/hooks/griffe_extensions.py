"""Griffe extensions for the API page (``mkdocs.yml`` loads them into mkdocstrings).

``NamespaceSubpackages``: ``interp/models`` has no ``__init__.py`` (a namespace package inside a regular one). Python
imports it; Griffe's static loader skips such folders on purpose, so ``interp.models.vlm.VLM``
and ``interp.models.loading.load`` could not be documented. After Griffe has loaded a package,
this extension visits every folder of it that has Python files but no ``__init__.py`` (and
everything below it) and attaches the modules it finds where Python would put them.

``SphinxRoles``: some docstrings use Sphinx roles (``:func:`load```); Markdown would show the role
name before the code. The role is dropped, the name kept as code (the source is not changed).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import griffe


#: ``:role:`target``` or ``:role:`~target``` (Sphinx cross-reference roles)
SPHINX_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj|const):`~?([^`]+)`")


class SphinxRoles(griffe.Extension):
    """Render Sphinx roles in docstrings as inline code (see the module docstring)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = SPHINX_ROLE.sub(r"`\1`", obj.docstring.value)


def _has_python(folder: Path) -> bool:
    return any(path.suffix == ".py" for path in folder.rglob("*.py"))


class NamespaceSubpackages(griffe.Extension):
    """Attach modules under namespace subfolders of a loaded package (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.filepath is None or isinstance(pkg.filepath, list) or pkg.filepath.name != "__init__.py":
            return
        self._load_folder(pkg.filepath.parent, pkg, loader, inside_namespace=False)

    def _load_folder(self, folder: Path, parent: griffe.Module, loader: griffe.GriffeLoader, inside_namespace: bool):
        for path in sorted(folder.iterdir()):
            if path.name == "__pycache__" or "." in path.stem:
                continue
            if path.is_dir():
                init = path / "__init__.py"
                if init.exists():
                    if inside_namespace:  # a regular package below a namespace one: Griffe never saw it
                        module = self._visit(path.name, init, parent, loader)
                        self._load_folder(path, module, loader, inside_namespace=True)
                    elif path.name in parent.members:  # loaded by Griffe: look for namespaces below
                        self._load_folder(path, parent.members[path.name], loader, inside_namespace=False)
                elif _has_python(path) and path.name not in parent.members:
                    module = griffe.Module(path.name, filepath=[path], parent=parent)
                    parent.set_member(path.name, module)
                    self._load_folder(path, module, loader, inside_namespace=True)
            elif inside_namespace and path.suffix == ".py" and path.stem != "__init__":
                self._visit(path.stem, path, parent, loader)

    @staticmethod
    def _visit(name: str, filepath: Path, parent: griffe.Module, loader: griffe.GriffeLoader) -> griffe.Module:
        module = griffe.visit(
            name,
            filepath,
            filepath.read_text(encoding="utf-8"),
            extensions=loader.extensions,
            parent=parent,
            docstring_parser=loader.docstring_parser,
            docstring_options=loader.docstring_options,
            lines_collection=loader.lines_collection,
            modules_collection=loader.modules_collection,
        )
        parent.set_member(name, module)
        return module
