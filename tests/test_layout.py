"""The layout users rely on: scripts import no script, product code has no test switches,
and tests read nothing outside the repository."""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = {"main_train", "main", "main_test", "get_stats", "get_Teff"}
# Every environment variable product code reads, and why: anything else would be a switch.
ALLOWED_ENVIRONMENT = {
    "PASCAL_DATA": "default data folder",
    "RANK": "torchrun", "WORLD_SIZE": "torchrun", "LOCAL_RANK": "torchrun",
    "LOCAL_WORLD_SIZE": "torchrun", "MASTER_ADDR": "torchrun", "MASTER_PORT": "torchrun",
    "TORCHELASTIC_RESTART_COUNT": "torchrun restarts",
    "TORCHELASTIC_USE_AGENT_STORE": "torchrun's store",
    "OMP_NUM_THREADS": "CPU threads per process",
    "CUBLAS_WORKSPACE_CONFIG": "--deterministic on CUDA",
    "TORCH_EXTENSIONS_DIR": "torch's extensions cache, where the fused QCFS kernel is built",
}


def product_files():
    files = [p for p in REPO.glob("*.py")] + list((REPO / "models").glob("*.py")) + \
        list((REPO / "benchmarks").glob("*.py"))
    assert len(files) > 10
    return sorted(files)


def imported_modules(tree):
    """Top-level module names of every import, at module level or inside functions."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant):
                names.add(str(node.args[0].value).split(".")[0])
    return names


@pytest.mark.parametrize("path", product_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_product_module_imports_a_script(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    wrong = imported_modules(tree) & (SCRIPTS - {path.stem})
    assert not wrong, f"{path.name} imports the script(s) {sorted(wrong)}: move the shared " \
                      "part into a library module"


def test_the_import_walk_sees_imports_inside_functions():
    tree = ast.parse("def f():\n    from get_stats import x\n    import main_train as m\n")
    assert imported_modules(tree) == {"get_stats", "main_train"}


@pytest.mark.parametrize("path", product_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_product_code_reads_only_documented_environment_variables(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    read = set()
    for node in ast.walk(tree):
        key = None
        if isinstance(node, ast.Subscript) and _is_environ(node.value):
            key = node.slice
        elif isinstance(node, ast.Call) and node.args and (
                (isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "setdefault",
                                                                              "pop")
                 and _is_environ(node.func.value))
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "getenv")):
            key = node.args[0]
        if key is not None:
            assert isinstance(key, ast.Constant), f"{path.name}: environment read by a " \
                                                  f"computed name (line {node.lineno})"
            read.add(key.value)
    unknown = read - set(ALLOWED_ENVIRONMENT)
    assert not unknown, f"{path.name} reads {sorted(unknown)} from the environment"


def _is_environ(node):
    return isinstance(node, ast.Attribute) and node.attr == "environ"


def test_tests_read_nothing_outside_the_repository():
    # spelled in pieces so that this file does not match itself
    outside = ("." + "./shared", "parents" + "[2]")
    for path in (REPO / "tests").glob("*.py"):
        text = path.read_text()
        assert not any(fragment in text for fragment in outside), path.name


# Product modules (the repository's top-level modules and the models package) whose globals
# tests must not replace, and private attributes of the spiking network they must not touch:
# a test injects faults from outside (data, signals, killed processes) and observes the
# network through its public API.
PRODUCT_MODULES = {path.stem for path in REPO.glob("*.py")} | {"models"}
PRIVATE_ATTRIBUTES = {"_plans", "_units"}


def reaches_into_the_product(source, product_modules=PRODUCT_MODULES):
    """``[(line, what), ...]``: every use in ``source`` of a private attribute of
    PRIVATE_ATTRIBUTES, and every replacement of a product module's attribute: ``setattr``
    (``monkeypatch.setattr`` included, with an object or a dotted string), ``delattr`` or an
    assignment whose target starts at a product module's name."""
    def root(node):
        while isinstance(node, ast.Attribute):
            node = node.value
        return node.id if isinstance(node, ast.Name) else None

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in PRIVATE_ATTRIBUTES:
            found.append((node.lineno, f"touches .{node.attr}"))
        elif isinstance(node, ast.Call) and node.args and (
                getattr(node.func, "attr", None) in ("setattr", "delattr") or
                getattr(node.func, "id", None) in ("setattr", "delattr")):
            target = node.args[0]
            name = (target.value.split(".")[0] if isinstance(target, ast.Constant) and
                    isinstance(target.value, str) else root(target))
            if name in product_modules:
                found.append((node.lineno, f"replaces an attribute of {name}"))
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Attribute) and root(target) in product_modules:
                    found.append((node.lineno, f"assigns to {root(target)}.{target.attr}"))
    return sorted(found)


def test_the_guard_sees_monkeypatching_and_private_attributes():
    source = ("import engine, checkpoint, torch\n"
              "def test(monkeypatch, snn):\n"
              "    monkeypatch.setattr(engine, 'step_seed', None)\n"
              "    monkeypatch.setattr(checkpoint.os, 'replace', None)\n"
              "    monkeypatch.setattr('engine.F.cross_entropy', None)\n"
              "    monkeypatch.delattr(engine, 'fit')\n"
              "    setattr(engine, 'fit', None)\n"
              "    engine.F.cross_entropy = None\n"
              "    snn._plans = {}\n"
              "    return snn._units\n"
              "def fine(monkeypatch, snn):\n"
              "    monkeypatch.setattr(torch.hub, 'download_url_to_file', None)\n"
              "    monkeypatch.setattr(snn, 'step_budget', 2)\n"
              "    return snn.ops\n")
    assert reaches_into_the_product(source, {"engine", "checkpoint"}) == [
        (3, "replaces an attribute of engine"), (4, "replaces an attribute of checkpoint"),
        (5, "replaces an attribute of engine"), (6, "replaces an attribute of engine"),
        (7, "replaces an attribute of engine"), (8, "assigns to engine.cross_entropy"),
        (9, "touches ._plans"), (10, "touches ._units")]


def test_tests_leave_product_modules_and_private_attributes_alone():
    assert {"engine", "checkpoint", "models", "main_train"} <= PRODUCT_MODULES
    for path in sorted((REPO / "tests").glob("*.py")):
        found = reaches_into_the_product(path.read_text())
        assert not found, f"{path.name}: " + "; ".join(f"line {line} {what}"
                                                       for line, what in found)


# --- one handler per role ------------------------------------------------------------------------

HANDLER_MODULE = REPO / "models" / "roles.py"


def _is_role(node):
    """``x.role``, ``role`` or ``Role.X``."""
    if isinstance(node, ast.Attribute) and node.attr == "role":
        return True
    if isinstance(node, ast.Name) and node.id == "role":
        return True
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
            node.value.id == "Role":
        return True
    return False


def role_branches(source):
    """``[(line, text), ...]``: every comparison (``==``, ``!=``, ``in``, ``not in``, ``is``)
    with a role on either side, and every ``match`` on a role."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            elements = [e for o in operands if isinstance(o, (ast.Tuple, ast.List, ast.Set))
                        for e in o.elts]
            if any(_is_role(o) for o in operands + elements):
                found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.Match) and _is_role(node.subject):
            found.append((node.lineno, ast.unparse(node.subject)))
    return found


def test_the_role_guard_sees_every_spelling():
    spellings = ['op.role == "neuron"', 'op.role != Role.ADD', 'g.role in ("pool", "maxpool")',
                 'role not in _WEIGHTLESS', 'n.role is Role.NEURON',
                 'kind in (Role.CAT, Role.ADD)']
    for spelling in spellings:
        assert role_branches(f"x = {spelling}\n"), spelling
    assert role_branches("match op.role:\n    case 'add':\n        pass\n")
    # assignments and the table lookup are not branches
    assert not role_branches('g.role = Role.ADD\nh = HANDLERS[op.role]\nk = g.kind == "burst"\n')


@pytest.mark.parametrize("path", [p for p in product_files() if p != HANDLER_MODULE],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_only_the_handler_module_branches_on_a_role(path):
    found = role_branches(path.read_text())
    assert not found, (f"{path.name} branches on a role at line(s) "
                       f"{[line for line, _ in found]} ({found[0][1]}); give the role's handler "
                       "in models/roles.py the behaviour instead")
