"""Every command line shown in the README and docs/ parses with its script's own parser.

A line in a fenced block that starts with ``python``, ``python3`` or ``torchrun`` (continued
with ``\\`` and chained with ``&&``) is a command; torchrun's own options are dropped, the
script is imported and its ``get_args_parser()`` parses the arguments. Placeholders (DIR,
NODE_RANK, FREEPORT, ...) stand for values of the right type.
"""
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks" /
        "README.md"]
# placeholders a user replaces, and a value of the type the flag expects
PLACEHOLDERS = {"NODE_RANK": "0", "FREEPORT": "23456", "NODE0_HOST": "127.0.0.1"}


def commands(path):
    """``[(line number, [argv...]), ...]`` of the commands in ``path``'s fenced blocks."""
    found, fenced, pending, start = [], False, "", 0
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            continue
        text = line.strip()
        if not pending and not re.match(r"(python3?|torchrun)\s", text):
            continue
        if not pending:
            start = number
        pending += " " + text
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        for part in pending.split("&&"):
            part = part.strip().rstrip("\\").strip()
            if re.match(r"(python3?|torchrun)\s", part):
                found.append((start, shlex.split(part, comments=True)))
        pending = ""
    return found


def script_and_args(argv):
    """``(script path, arguments)``, or None for ``python -m ...`` / ``python -c ...``."""
    if argv[0] == "torchrun":
        rest = argv[1:]
        while rest and rest[0].startswith("-"):  # torchrun's own options, all --opt=value here
            rest = rest[1:]
    else:
        rest = argv[1:]
        if rest and rest[0] in ("-m", "-c"):
            return None
    script, args = rest[0], rest[1:]
    return script, [PLACEHOLDERS.get(arg, arg) for arg in args]


def all_commands():
    """Every command of one of the project's scripts (``python -m pip``, ``python -m
    pytest`` and the like are not ours and are left out)."""
    cases = []
    for path in DOCS:
        for number, argv in commands(path):
            if script_and_args(argv) is not None:
                cases.append(pytest.param(argv, id=f"{path.relative_to(REPO)}:{number}"))
    return cases


def test_the_docs_show_commands_of_every_script():
    scripts = {script_and_args(case.values[0])[0] for case in all_commands()}
    assert {"main_train.py", "main.py", "main_test.py", "get_stats.py", "get_Teff.py"} <= scripts


@pytest.mark.parametrize("argv", all_commands())
def test_command_parses(argv):
    script, args = script_and_args(argv)
    path = REPO / script
    assert path.is_file(), f"{script} does not exist"
    spec = importlib.util.spec_from_file_location(f"docs_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.get_args_parser().parse_args(args)  # argparse exits (status 2) on a bad line


def test_the_extraction_sees_continuations_chains_and_torchrun_options(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n```\n# comment\npython3 a.py -x 1 && \\\npython3 b.py --y 2\n"
                    "torchrun --standalone --nproc_per_node=2 c.py --z \\\n    3  # note\n"
                    "pip install x\n```\npython3 outside.py\n")
    found = commands(page)
    assert [argv for _, argv in found] == [["python3", "a.py", "-x", "1"],
                                           ["python3", "b.py", "--y", "2"],
                                           ["torchrun", "--standalone", "--nproc_per_node=2",
                                            "c.py", "--z", "3"]]
    assert script_and_args(found[2][1]) == ("c.py", ["--z", "3"])


def test_the_energy_constants_table_matches_the_code():
    """docs/evaluation.md lists every energy constant with the default the code uses."""
    import energy_model
    rows = {}
    for line in (REPO / "docs" / "evaluation.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].strip("`") in energy_model.CONSTANTS:
            rows[cells[0].strip("`")] = cells
    assert set(rows) == set(energy_model.CONSTANTS)
    for name, constant in energy_model.CONSTANTS.items():
        default = "null" if constant.value is None else f"{constant.value:g}"
        _, value, unit, _, uncertain = rows[name]
        assert (value, unit, uncertain == "yes") == (default, constant.unit, constant.uncertain), \
            name
