"""The README and the docs site: the README stays short and its example runs, the generated
command-line page is the parser's own help, the site builds strictly with every internal link
resolved, and its pages render in a real browser."""

from __future__ import annotations

import argparse
import ast
import functools
import html.parser
import http.server
import importlib.util
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_MAX_LINES = 200


@pytest.fixture(scope="module")
def gen_pages():
    """``docs/hooks/gen_pages.py``, the MkDocs hook that generates the reference pages."""
    spec = importlib.util.spec_from_file_location("gen_pages", ROOT / "docs" / "hooks" / "gen_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _subcommands(parser: argparse.ArgumentParser, prefix: str = "interp"):
    """``{command: parser}`` of every subcommand under ``parser`` (walked here, not by the generator)."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[f"{prefix} {name}"] = sub
                found.update(_subcommands(sub, f"{prefix} {name}"))
    return found


# -- the README ---------------------------------------------------------------------------------


def test_readme_is_at_most_200_lines():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_command_table_lists_every_command():
    """The README's command table has one row per top-level subcommand of the parser."""
    from interp.cli import build_parser

    rows = set(re.findall(r"^\| `interp ([a-z-]+)` \|", README.read_text(), re.M))
    top_level = {command.split()[1] for command in _subcommands(build_parser()) if len(command.split()) == 2}
    assert rows == top_level


def runnable_blocks(text: str) -> list[str]:
    """The ```python blocks right after a ``<!-- runnable ... -->`` marker."""
    return re.findall(r"<!-- runnable[^>]*-->\s*\n```python\n(.*?)\n```", text, re.S)


def test_readme_python_example_runs(tmp_path):
    blocks = runnable_blocks(README.read_text())
    assert blocks, "README.md has no <!-- runnable --> python block"
    script = tmp_path / "readme_example.py"
    script.write_text("\n\n".join(blocks) + "\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| expected:" in done.stdout, done.stdout


# -- the generated command-line reference -------------------------------------------------------


def test_cli_reference_is_the_parsers_help(gen_pages, monkeypatch):
    """Every section of the CLI page is ``format_help()`` of one command, and every command has one."""
    from interp.cli import build_parser

    page = gen_pages.cli_page()
    monkeypatch.setenv("COLUMNS", str(gen_pages.HELP_WIDTH))  # the width the generator renders at
    parser = build_parser()
    expected = {"interp": parser.format_help()}
    expected.update({command: sub.format_help() for command, sub in _subcommands(parser).items()})
    sections = re.findall(r"^## `([^`]+)`[^\n]*\n\n```text\n(.*?)\n```$", page, re.S | re.M)
    assert [command for command, _ in sections] == list(expected), "commands missing, extra or out of order"
    for command, text in sections:
        assert text == expected[command].rstrip("\n"), f"the page's `{command}` is not its --help"
    listed = re.findall(r"^\| \[`([^`]+)`\]\(#([^)]+)\)", page, re.M)
    assert [command for command, _ in listed] == list(expected)
    assert all(f"{{#{anchor}}}" in page for _, anchor in listed)


def test_hook_table_has_every_site(gen_pages):
    from interp.sites import REGISTRY

    page = gen_pages.hooks_page()
    for site in REGISTRY:
        assert f"| `{site.name}` | `{site.key}` |" in page
    assert set(gen_pages.SITE_VALUES) == {site.key for site in REGISTRY}, "a site has no description"


def test_api_page_documents_every_public_name(gen_pages):
    import interp

    page = gen_pages.api_page()
    blocks = re.findall(r"^::: (\S+)$", page, re.M)
    assert [path.rsplit(".", 1)[1] for path in blocks] == list(interp.__all__)


# -- the built site -----------------------------------------------------------------------------


class _Links(html.parser.HTMLParser):
    """Every ``href``/``src`` and every ``id`` of one page."""

    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name == "id" and value:
                self.ids.add(value)
            elif name in ("href", "src") and value is not None:
                self.links.append(value)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built as ``make docs`` builds it, into a temporary folder."""
    pytest.importorskip("mkdocs", reason="mkdocs not installed (pip install -e '.[docs]')")
    pytest.importorskip("mkdocstrings", reason="mkdocstrings not installed (pip install -e '.[docs]')")
    pytest.importorskip("mkdocs_jupyter", reason="mkdocs-jupyter not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", "mkdocs.yml", "-d", str(out)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-5000:]
    assert "WARNING" not in log, log[-5000:]
    return out


def test_site_builds_strictly_and_every_internal_link_resolves(site):
    index = json.loads((site / "search" / "search_index.json").read_text())
    assert len(index["docs"]) > 50
    # 404.html is the one page with absolute links (served at the root)
    pages = {path.resolve(): _Links() for path in site.rglob("*.html") if path.name != "404.html"}
    for path, links in pages.items():
        links.feed(path.read_text(encoding="utf-8"))
    broken = []
    for path, links in pages.items():
        for link in links.links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc:  # external: not checked offline
                continue
            target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{path.relative_to(site.resolve())}: {link}")
            elif parts.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else set()
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{path.relative_to(site.resolve())}: {link} (no such anchor)")
    assert not broken, "\n".join(broken[:40])
    for page in ("index.html", "reference/api.html", "reference/cli.html", "reference/hooks.html"):
        assert (site / page).exists(), page
    assert sorted(p.stem for p in (site / "notebooks").glob("*.html")) == sorted(
        p.stem for p in (ROOT / "notebooks").glob("*.ipynb")
    )


def _chromium() -> str | None:
    return next(
        (path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))), None
    )


def test_pages_render_in_headless_chromium(site, tmp_path):
    """The home page, an API page and a notebook page load over HTTP with no console error, show
    what they should (API entries; the notebook's committed outputs, images included), and their
    screenshots are not one colour."""
    browser_path = _chromium()
    if browser_path is None:
        pytest.skip("no Chromium installed (apt-get install chromium; .ci/run installs it)")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
    from PIL import Image

    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    checks = {  # page -> (selector, at least this many)
        "index.html": ("article h1", 1),
        "reference/api.html": (".doc-class", 10),
        "notebooks/01_quickstart.html": (".jp-RenderedImage img", 1),
    }
    problems, shots = [], []
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox", "--disable-gpu"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: problems.append(str(e)))
                for url, (selector, at_least) in checks.items():
                    page.goto(base + url)
                    page.wait_for_load_state("networkidle")
                    assert page.locator(selector).count() >= at_least, f"{url}: fewer than {at_least} {selector}"
                    shot = tmp_path / (url.replace("/", "_") + ".png")
                    page.screenshot(path=str(shot))
                    shots.append((url, shot))
            finally:
                browser.close()
    finally:
        server.shutdown()
    assert not problems, problems
    for url, shot in shots:
        pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
        assert pixels.std() > 10 and len(np.unique(pixels)) > 50, f"{url}: the screenshot is blank"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # no request log on the test's stderr
        pass


# -- the public names' docstrings ---------------------------------------------------------------


def _returns_value(function) -> bool:
    """Annotated to return something other than None, or (unannotated) has a ``return <value>``."""
    annotation = inspect.signature(function).return_annotation
    if annotation is inspect.Signature.empty:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
        return any(isinstance(node, ast.Return) and node.value is not None for node in ast.walk(tree))
    return annotation not in (None, "None")


def test_public_names_have_google_style_docstrings():
    """Every class or function of ``interp.__all__`` that takes parameters documents them under
    ``Args:`` (a class: its constructor's, in the class docstring); a function that returns a
    value says what under ``Returns:``."""
    import interp

    missing = []
    for name in interp.__all__:
        obj = getattr(interp, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        doc = inspect.getdoc(obj) or ""
        parameters = [
            p
            for p in inspect.signature(obj).parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        if parameters and "Args:" not in doc:
            missing.append(f"{name}: no Args:")
        if inspect.isfunction(obj) and _returns_value(obj) and "Returns:" not in doc:
            missing.append(f"{name}: no Returns:")
    assert not missing, missing
