"""The pipeline's analysis steps on real snippets, against answers worked out by hand."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from services.pipeline.analysis import (
    MAX_SOURCE_BYTES,
    AnalysisError,
    ComplexityResult,
    Function,
    Import,
    ParseResult,
    Report,
    SecurityResult,
    analyze_complexity,
    generate_report,
    parse,
    rank,
    security_scan,
)


def src(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


MODULE = src('''
    """A module."""
    import os.path
    import json as j
    from . import sibling
    from ..pkg.mod import a, b as c


    class Stack(list, metaclass=Meta):
        def push(self, item, /, *more, front=False, **options):
            pass

        async def pop(self):
            def helper():
                pass


    async def main(argv):
        class Local:
            pass
''')


def test_parse_finds_functions_classes_imports_and_lines() -> None:
    result = parse(MODULE, "Python")
    assert result.language == "python"
    assert result.line_count == 19
    assert result.functions == [
        Function("push", 9, 10, ["self", "item", "*more", "front", "**options"], False, "Stack"),
        Function("pop", 12, 14, ["self"], True, "Stack"),
        Function("helper", 13, 14, [], False, None),
        Function("main", 17, 19, ["argv"], True, None),
    ]
    assert [(c.name, c.line, c.end_line, c.bases, c.methods) for c in result.classes] == [
        ("Stack", 8, 14, ["list"], ["push", "pop"]),
        ("Local", 18, 19, [], []),
    ]
    assert result.imports == [
        Import("", ["os.path"], 2),
        Import("", ["json"], 3),
        Import(".", ["sibling"], 4),
        Import("..pkg.mod", ["a", "b"], 5),
    ]


def test_empty_source_is_an_empty_module() -> None:
    assert parse("", "python") == ParseResult("python", 0, [], [], [])
    assert analyze_complexity("") == ComplexityResult([], 0.0, None)
    assert security_scan("") == SecurityResult([])


def test_a_syntax_error_names_its_message_line_and_column() -> None:
    with pytest.raises(AnalysisError, match=r"syntax error: .*\(line 3, column \d+\)"):
        parse("x = 1\ny = 2\ndef broken(:\n    pass\n", "python")
    with pytest.raises(AnalysisError, match="unindent does not match"):
        analyze_complexity("if x:\n        a\n    b\n")


def test_only_python_is_parsed() -> None:
    with pytest.raises(AnalysisError, match="'rust' is not supported"):
        parse("fn main() {}", "rust")


COMPLEXITIES = src("""
    def straight(a):
        return a + 1

    def branches(a):
        if a > 0:
            return 1
        elif a < 0:
            return -1
        else:
            return 0

    def loops(items):
        for i in items:
            pass
        else:
            pass
        while items:
            items.pop()
        async def inner():
            if True:
                pass

    def handlers(path):
        try:
            with open(path) as f:
                assert f
        except OSError:
            pass
        except ValueError:
            pass
        finally:
            pass

    def expressions(xs, a, b, c):
        ok = a and b and c or not a
        ys = [x for x in xs if x if x > 1 for _ in xs]
        return (lambda: 1 if ok else 2), ys

    def matching(command):
        match command:
            case "go":
                pass
            case ("stop" | "halt") if command:
                pass
            case _:
                pass

    class Shape:
        def area(self):
            return 0 if self else 1
""")


def test_cyclomatic_complexity_per_function() -> None:
    result = analyze_complexity(COMPLEXITIES)
    found = {f.name: (f.line, f.complexity, f.rank) for f in result.functions}
    assert found == {
        "straight": (1, 1, "A"),
        "branches": (4, 3, "A"),  # if + elif
        "loops": (12, 4, "A"),  # for (+ else) + while; the inner function apart
        "loops.inner": (19, 2, "A"),
        "handlers": (23, 5, "A"),  # with + assert + two except handlers
        # and/and/or: 3; the comprehension's two fors and two ifs: 4; the ternary: 1
        "expressions": (34, 9, "B"),
        "matching": (39, 3, "A"),  # two cases; `case _:` is the else
        "Shape.area": (49, 2, "A"),
    }
    assert [f.name for f in result.functions][:3] == ["straight", "branches", "loops"]
    assert result.average == round((1 + 3 + 4 + 2 + 5 + 9 + 3 + 2) / 8, 2)
    assert result.most_complex is not None
    assert result.most_complex.name == "expressions"


RADON = [(1, "A"), (5, "A"), (6, "B"), (10, "B"), (11, "C"), (20, "C"), (21, "D"), (30, "D")]
RADON += [(31, "E"), (40, "E"), (41, "F"), (500, "F")]


@pytest.mark.parametrize(("complexity", "letter"), RADON)
def test_ranks_are_radons(complexity: int, letter: str) -> None:
    assert rank(complexity) == letter


def test_a_long_elif_chain_ranks_f() -> None:
    chain = "def f(x):\n" + "".join(
        f"    {'el' if n else ''}if x == {n}: pass\n" for n in range(45)
    )
    [function] = analyze_complexity(chain).functions
    assert (function.complexity, function.rank) == (46, "F")


DANGEROUS = src("""
    import pickle
    import subprocess as sp
    import os
    import yaml
    from pickle import loads as unpickle
    from subprocess import check_output
    import builtins

    eval(user_input)
    exec(user_input)
    pickle.loads(blob)
    pickle.load(handle)
    unpickle(blob)
    sp.run(cmd, shell=True)
    check_output(cmd, shell=1)
    sp.Popen(cmd, shell=False)
    os.system(cmd)
    yaml.load(text)
    yaml.load(text, Loader=yaml.FullLoader)
    yaml.load(text, Loader=yaml.SafeLoader)
    yaml.load(text, yaml.CSafeLoader)
    password = "hunter2"
    self.api_key = "sk-live-123"
    connect(host, auth_token="abc")
    settings = {"client_secret": "s3cr3t", "name": "x"}
    def login(user, passwd="letmein", *, DB_PASSWORD="pw"):
        pass
    token: str = "t"
    empty_password = ""
    password_hint = hint
    builtins.eval(expr)
""")


def test_every_rule_is_found_on_its_line() -> None:
    found = [(f.line, f.rule, f.severity) for f in security_scan(DANGEROUS).findings]
    assert found == [
        (9, "eval", "high"),
        (10, "exec", "high"),
        (11, "pickle", "high"),
        (12, "pickle", "high"),
        (13, "pickle", "high"),  # `from pickle import loads as unpickle`
        (14, "shell", "high"),  # `import subprocess as sp`
        (15, "shell", "high"),  # `from subprocess import check_output`; shell=1 is true
        (17, "shell", "high"),  # os.system; shell=False on line 16 is fine
        (18, "yaml-load", "medium"),
        (19, "yaml-load", "medium"),  # FullLoader is not a safe loader
        (22, "hardcoded-secret", "medium"),
        (23, "hardcoded-secret", "medium"),
        (24, "hardcoded-secret", "medium"),
        (25, "hardcoded-secret", "medium"),
        (26, "hardcoded-secret", "medium"),
        (26, "hardcoded-secret", "medium"),
        (28, "hardcoded-secret", "medium"),
        (31, "eval", "high"),
    ]
    assert "'password' is a string literal" in security_scan(DANGEROUS).findings[10].message


CLEAN = src("""
    import ast
    import os
    import subprocess
    import yaml

    def load(text, password):
        data = yaml.safe_load(text)
        token = os.environ["TOKEN"]
        subprocess.run(["ls", "-l"], check=True)
        return ast.literal_eval(data), token, password

    class Evaluator:
        def eval(self, expression):
            return expression
""")


def test_clean_code_finds_nothing() -> None:
    assert security_scan(CLEAN).findings == []


def test_a_local_eval_method_is_not_the_builtin_but_a_rebound_name_is_followed() -> None:
    assert security_scan("x.eval(y)\nimport os as eval\n").findings == []
    [finding] = security_scan("from os import system as run\nrun(cmd)\n").findings
    assert (finding.rule, finding.line) == ("shell", 2)


def test_report_combines_the_steps() -> None:
    code = DANGEROUS + COMPLEXITIES
    parsed, complexity, security = (
        parse(code, "python"),
        analyze_complexity(code),
        security_scan(code),
    )
    report = generate_report(parsed, complexity, security)
    assert report.summary.lines == 31 + 50
    assert report.summary.functions == 1 + 8  # login, and the eight of COMPLEXITIES
    assert report.summary.classes == 1
    assert report.summary.imports == 7
    assert report.summary.max_complexity == 9
    assert report.summary.average_complexity == round((1 + 29) / 9, 2)
    assert report.summary.findings == 18
    assert {s: len(f) for s, f in report.findings_by_severity.items()} == {
        "high": 9,
        "medium": 9,
        "low": 0,
    }
    assert report.grade == "F"
    assert [f.name for f in report.worst_functions] == [
        "expressions",
        "handlers",
        "loops",
        "branches",
        "matching",
    ]
    assert report.markdown.startswith("# Code analysis: grade F\n")
    assert "- `expressions` (line 65): 9 (B)" in report.markdown
    assert "- **high** line 9 `eval`" in report.markdown


def test_the_grade_of_clean_simple_code_is_its_complexity_rank() -> None:
    code = COMPLEXITIES
    report = generate_report(parse(code, "python"), analyze_complexity(code), security_scan(code))
    assert report.grade == "A"
    one_medium = code + 'password = "x"\n'
    security = security_scan(one_medium)
    assert generate_report(parse(code, "python"), analyze_complexity(code), security).grade == "B"
    assert "## Security findings" not in report.markdown


def test_results_travel_as_json() -> None:
    code = DANGEROUS + COMPLEXITIES
    parsed, complexity, security = (
        parse(code, "python"),
        analyze_complexity(code),
        security_scan(code),
    )
    report = generate_report(parsed, complexity, security)
    for value in (parsed, complexity, security, report):
        kind: Any = type(value)
        assert msgspec.json.decode(msgspec.json.encode(value), type=kind) == value
    assert isinstance(msgspec.json.decode(msgspec.json.encode(report), type=Report), Report)


STEPS: list[Callable[[str], object]] = [
    lambda code: parse(code, "python"),
    analyze_complexity,
    security_scan,
]
HOSTILE = {
    "oversized": "x = 1\n" * (MAX_SOURCE_BYTES // 6 + 1),
    "deep unary": "x = " + "-" * 100_000 + "1\n",
    "deep operators": "x = " + "+".join(["a"] * 200_000) + "\n",
    "deep indentation": "".join(" " * n + "if x:\n" for n in range(150)) + " " * 150 + "pass\n",
    "nul byte": "x = 1\x00\n",
    "surrogate": "x = '\ud800'\n",
}


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_source_is_an_analysis_error(step: Callable[[str], object], name: str) -> None:
    with pytest.raises(AnalysisError):
        step(HOSTILE[name])


def test_deep_but_parseable_nesting_is_walked_without_recursion() -> None:
    """Nesting the parser accepts (90 levels of blocks, a long chain of `or`) is walked with
    explicit stacks, whatever the interpreter's recursion limit."""
    nested = "def f(x):\n" + "".join(" " * (n + 4) + "if x:\n" for n in range(90))
    nested += " " * 94 + "pass\n"
    chain = "def g(x):\n    return " + " or ".join(["x"] * 5000) + "\n"
    found = {f.name: f.complexity for f in analyze_complexity(nested + chain).functions}
    assert found == {"f": 91, "g": 5000}
    assert security_scan(nested + chain).findings == []
