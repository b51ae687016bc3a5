"""The package's shape, read from its source: the stages in pipeline order, each importing only
the stages before it; no import cycles; no function over 100 lines; tests laid out like the
package."""

from __future__ import annotations

import ast
from pathlib import Path

import gptforge

ROOT = Path(gptforge.__file__).parent
TESTS = Path(__file__).parent

# The top-level modules and packages in pipeline order: each may import its own stage and the ones
# before it, never a later one. The README's code map tells the same order.
STAGES = (
    ("errors", "checks", "files", "field_docs", "device", "distributed", "sampling"),  # shared by every stage
    ("text",),  # what an INPUT names, read as documents; the train/val split
    ("tokenizer",),  # text <-> ids, and training one on text
    ("config",),  # the model's shape (its default vocabulary is GPT-2's) and a run's settings
    ("data",),  # documents -> token corpora -> batches
    ("model",),
    ("weights",),  # checkpoints and Hugging Face folders
    ("generate", "evaluate", "tools"),  # before training: a run samples and measures its loss as it goes;
    # tools: what a reply calls, and the tools the terminal chat runs
    ("training",),
    ("chat", "serve", "retrieval", "bench"),
    ("cli", "__main__"),
)


def module_name(path: Path) -> str:
    parts = ("gptforge",) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts).removesuffix(".__init__")


def import_graph() -> dict[str, set[str]]:
    """Module -> the gptforge modules it imports (at any depth: a function-level import counts),
    a package's __init__ counted as the package itself."""
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            # The package root only re-exports its submodules' names: importing it is not a
            # dependency on any of them in particular.
            edges.update(t for t in targets if t in files and t not in (name, "gptforge"))
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the list of modules around it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def stage_of(module: str) -> int | None:
    """The index in STAGES of the top-level part `module` belongs to (None for the package root,
    which re-exports the public names of every stage)."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    for index, names in enumerate(STAGES):
        if parts[1] in names:
            return index
    raise AssertionError(f"{parts[1]} is in no stage: add it to STAGES in its place in the pipeline")


def back_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a later stage by an earlier one, as "importer -> imported"."""
    found = []
    for module, imports in sorted(graph.items()):
        here = stage_of(module)
        if here is None:
            continue
        found += [f"{module} -> {target}" for target in sorted(imports) if (stage_of(target) or 0) > here]
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_import_graph_sees_relative_and_function_level_imports():
    graph = import_graph()
    assert "gptforge.model.gpt" in graph["gptforge.weights.checkpoint"]  # from ..model.gpt import ...
    assert "gptforge.training" in graph["gptforge.cli.train"]  # inside run()


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_stage_check_finds_the_tokenizer_importing_data():
    """The back import that once stood (tokenizer training read its INPUTs through data/) is caught,
    and the same edge the other way round is fine."""
    graph = {"gptforge.tokenizer.train": {"gptforge.data.sources"}, "gptforge.data.sources": set()}
    assert back_imports(graph) == ["gptforge.tokenizer.train -> gptforge.data.sources"]
    assert back_imports({"gptforge.data.encode": {"gptforge.tokenizer"}, "gptforge.tokenizer": set()}) == []


def test_every_top_level_module_has_a_stage():
    tops = {p.relative_to(ROOT).parts[0].removesuffix(".py") for p in ROOT.rglob("*.py")} - {"__init__"}
    staged = {name for names in STAGES for name in names}
    assert tops == staged


def test_each_stage_imports_only_the_stages_before_it():
    found = back_imports(import_graph())
    assert not found, "imports of a later stage:\n" + "\n".join(found)


def test_no_function_over_100_lines():
    long = []
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 100:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, long


def is_slow_mark(node: ast.expr) -> bool:
    """`pytest.mark.slow`, bare or inside a list (module-level `pytestmark = [...]`)."""
    if isinstance(node, (ast.List, ast.Tuple)):
        return any(is_slow_mark(e) for e in node.elts)
    return ast.unparse(node) == "pytest.mark.slow"


def fast_tests(source: str) -> list[str]:
    """The tests of a test file that the fast tier runs: none when the whole module is marked slow."""
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in node.targets):
            if is_slow_mark(node.value):
                return []
    return [node.name for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_")
            and not any(is_slow_mark(d) for d in node.decorator_list)]


def test_the_fast_test_finder_sees_slow_marks():
    source = "import pytest\n\n@pytest.mark.slow\ndef test_a(): pass\n\ndef test_b(): pass\n"
    assert fast_tests(source) == ["test_b"]
    assert fast_tests("import pytest\npytestmark = pytest.mark.slow\ndef test_b(): pass\n") == []


def test_every_test_file_has_fast_tests():
    """The fast tier (`python -m pytest`) covers every module: each test file keeps tests outside
    the slow tier."""
    # Tests of the server as a process, under load and under a stream of generated requests, by
    # nature; serve/app.py's fast tests are in test_app.py and test_hardening.py.
    processes = {"serve/test_soak.py", "serve/test_server_process.py", "serve/test_fuzz.py"}
    slow_only = {p.relative_to(TESTS).as_posix() for p in sorted(TESTS.rglob("test_*.py"))
                 if not fast_tests(p.read_text())}
    assert slow_only == processes


def test_tests_mirror_the_package():
    """Every subpackage has a tests folder of the same name, and no tests folder lacks one."""
    packages = {p.parent.relative_to(ROOT).as_posix() for p in ROOT.rglob("__init__.py")} - {"."}
    test_dirs = {p.relative_to(TESTS).as_posix() for p in TESTS.iterdir()
                 if p.is_dir() and any(p.glob("test_*.py"))}
    assert packages == test_dirs


def test_test_file_names_are_unique():
    """pytest imports test files by basename (rootdir-relative packages are not used here), so two
    test files of one name in different folders cannot be collected in one run."""
    names = [p.name for p in TESTS.rglob("test_*.py")]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
