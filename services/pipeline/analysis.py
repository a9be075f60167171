"""The code-analysis pipeline's steps: pure standard-library functions on Python source.

Each takes and returns msgspec Structs, because each runs as a workflow step on whichever
component handles it and its result travels as JSON. Source is bounded (size, nesting, NUL
bytes) and every walk over the tree is iterative, so hostile input ends in `AnalysisError`,
never in a crash of the component.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from statistics import fmean
from typing import Literal

import msgspec

MAX_SOURCE_BYTES = 1_000_000
SEVERITIES = ("high", "medium", "low")
RANKS = ((5, "A"), (10, "B"), (20, "C"), (30, "D"), (40, "E"))  # radon's bounds; above: F
WORST_SHOWN = 5

Severity = Literal["high", "medium", "low"]
Rule = tuple[str, Severity, str]  # rule id, severity, message


class AnalysisError(Exception):
    """The source cannot be analysed: too big, not Python, or not parseable (the message
    carries the syntax error's text, line and column)."""


class Function(msgspec.Struct, frozen=True):
    name: str
    line: int
    end_line: int
    arguments: list[str]
    is_async: bool = False
    class_name: str | None = None  # set for a method (defined directly in a class body)


class Class(msgspec.Struct, frozen=True):
    name: str
    line: int
    end_line: int
    bases: list[str]
    methods: list[str]


class Import(msgspec.Struct, frozen=True):
    module: str  # "" for `import a.b`; ".pkg" for `from .pkg import x`
    names: list[str]  # as written: "a.b" for `import a.b`, "x" for `from m import x as y`
    line: int


class ParseResult(msgspec.Struct, frozen=True):
    language: str
    line_count: int
    functions: list[Function]
    classes: list[Class]
    imports: list[Import]


class FunctionComplexity(msgspec.Struct, frozen=True):
    name: str  # qualified: "Class.method", "outer.inner"
    line: int
    complexity: int
    rank: str


class ComplexityResult(msgspec.Struct, frozen=True):
    functions: list[FunctionComplexity]
    average: float  # 0.0 when there is no function
    most_complex: FunctionComplexity | None


class Finding(msgspec.Struct, frozen=True):
    rule: str
    line: int
    severity: Severity
    message: str


class SecurityResult(msgspec.Struct, frozen=True):
    findings: list[Finding]


class Summary(msgspec.Struct, frozen=True):
    lines: int
    functions: int
    classes: int
    imports: int
    average_complexity: float
    max_complexity: int
    findings: int


class Report(msgspec.Struct, frozen=True):
    grade: str
    summary: Summary
    worst_functions: list[FunctionComplexity]
    findings_by_severity: dict[str, list[Finding]]
    markdown: str = ""


def _tree(code: str) -> ast.Module:
    """The source's tree, or AnalysisError for anything that is not a bounded Python module."""
    size = len(code.encode("utf-8", "surrogatepass"))
    if size > MAX_SOURCE_BYTES:
        raise AnalysisError(f"source is {size} bytes, over the limit of {MAX_SOURCE_BYTES}")
    if "\x00" in code:
        raise AnalysisError("source contains NUL bytes")
    try:
        return ast.parse(code)
    except SyntaxError as error:
        raise AnalysisError(
            f"syntax error: {error.msg} (line {error.lineno}, column {error.offset})"
        ) from None
    except (RecursionError, MemoryError):
        raise AnalysisError("source is nested too deeply to analyse") from None
    except ValueError as error:  # e.g. surrogates that cannot be encoded
        raise AnalysisError(f"source cannot be read: {error}") from None


FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef


def _defs(tree: ast.Module) -> Iterator[tuple[FunctionNode | ast.ClassDef, str, str | None]]:
    """Every function and class with its qualified name and, for a method, its class:
    a depth-first walk with an explicit stack, in source order."""
    stack: list[tuple[ast.AST, str, str | None]] = [(tree, "", None)]
    while stack:
        node, prefix, owner = stack.pop()
        if isinstance(node, FunctionNode | ast.ClassDef):
            qualname = f"{prefix}{node.name}"
            yield node, qualname, owner
            inner = node.name if isinstance(node, ast.ClassDef) else None
            prefix, owner = f"{qualname}.", inner
        children = reversed(list(ast.iter_child_nodes(node)))  # popped in source order
        stack.extend((child, prefix, owner) for child in children)


def _dotted(node: ast.expr) -> str:
    """`a.b.c` as text ("" for anything that is not a plain dotted name)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ""
    parts.append(node.id)
    return ".".join(reversed(parts))


def _arguments(args: ast.arguments) -> list[str]:
    star = [f"*{args.vararg.arg}"] if args.vararg else []
    stars = [f"**{args.kwarg.arg}"] if args.kwarg else []
    named = [a.arg for a in (*args.posonlyargs, *args.args)]
    return [*named, *star, *(a.arg for a in args.kwonlyargs), *stars]


def parse(code: str, language: str) -> ParseResult:
    """Functions, classes and imports of a Python module."""
    if language.lower() != "python":
        raise AnalysisError(f"language {language!r} is not supported (only python)")
    tree = _tree(code)
    functions, classes = [], []
    for node, _, owner in _defs(tree):
        end = node.end_lineno or node.lineno
        if isinstance(node, ast.ClassDef):
            methods = [n.name for n in node.body if isinstance(n, FunctionNode)]
            bases = [_dotted(b) or "<expression>" for b in node.bases]
            classes.append(Class(node.name, node.lineno, end, bases, methods))
        else:
            is_async = isinstance(node, ast.AsyncFunctionDef)
            arguments = _arguments(node.args)
            functions.append(Function(node.name, node.lineno, end, arguments, is_async, owner))
    imports = []
    for statement in ast.walk(tree):
        if isinstance(statement, ast.Import):
            imports.append(Import("", [a.name for a in statement.names], statement.lineno))
        elif isinstance(statement, ast.ImportFrom):
            module = "." * statement.level + (statement.module or "")
            imports.append(Import(module, [a.name for a in statement.names], statement.lineno))
    imports.sort(key=lambda i: i.line)
    return ParseResult("python", len(code.splitlines()), functions, classes, imports)


def rank(complexity: int) -> str:
    """Radon's letter for a cyclomatic complexity: A (1-5) to F (41 and more)."""
    return next((letter for bound, letter in RANKS if complexity <= bound), "F")


def _branches(node: ast.AST) -> int:
    """What one node adds to McCabe's count."""
    if isinstance(node, ast.If | ast.IfExp | ast.With | ast.AsyncWith | ast.Assert):
        return 1
    if isinstance(node, ast.For | ast.AsyncFor | ast.While):
        return 1 + bool(node.orelse)
    if isinstance(node, ast.Try | ast.TryStar):
        return len(node.handlers)
    if isinstance(node, ast.BoolOp):
        return len(node.values) - 1
    if isinstance(node, ast.comprehension):
        return 1 + len(node.ifs)
    if isinstance(node, ast.match_case):  # but `case _:`, the match's `else`
        wildcard = isinstance(node.pattern, ast.MatchAs) and node.pattern.pattern is None
        return 0 if wildcard and node.guard is None else 1
    return 0


def _complexity(function: FunctionNode) -> int:
    """1 + the branches in the function's own body (nested functions and classes count
    apart; lambdas count in the function that holds them)."""
    total = 1
    stack = [*function.body, *function.decorator_list]
    while stack:
        node = stack.pop()
        if isinstance(node, FunctionNode | ast.ClassDef):
            continue
        total += _branches(node)
        stack.extend(ast.iter_child_nodes(node))
    return total


def analyze_complexity(code: str) -> ComplexityResult:
    """Cyclomatic complexity (McCabe) of every function, ranked as radon ranks it."""
    functions = []
    for node, name, _ in _defs(_tree(code)):
        if not isinstance(node, ast.ClassDef):
            score = _complexity(node)
            functions.append(FunctionComplexity(name, node.lineno, score, rank(score)))
    if not functions:
        return ComplexityResult([], 0.0, None)
    average = round(fmean(f.complexity for f in functions), 2)
    most = max(functions, key=lambda f: f.complexity)  # the first of equals, in source order
    return ComplexityResult(functions, average, most)


SECRET_NAME = re.compile(
    r"passw(or)?d|pwd|secret|token|api_?key|private_?key|access_?key|credential", re.I
)
SHELL_CALLS = frozenset(
    f"subprocess.{f}" for f in ("run", "call", "check_call", "check_output", "Popen")
)
SAFE_YAML_LOADERS = frozenset(
    f"yaml.{loader}" for loader in ("SafeLoader", "CSafeLoader", "BaseLoader")
)
EVAL: Rule = ("eval", "high", "eval() runs arbitrary code; parse data with ast.literal_eval")
EXEC: Rule = ("exec", "high", "exec() runs arbitrary code")
UNPICKLE: Rule = ("pickle", "high", "unpickling untrusted data runs arbitrary code")
CALL_RULES: dict[str, Rule] = {
    "eval": EVAL,
    "builtins.eval": EVAL,
    "exec": EXEC,
    "builtins.exec": EXEC,
    "pickle.loads": UNPICKLE,
    "pickle.load": UNPICKLE,
    "os.system": ("shell", "high", "os.system() runs a command through the shell"),
    "os.popen": ("shell", "high", "os.popen() runs a command through the shell"),
}


def _aliases(tree: ast.Module) -> dict[str, str]:
    """Local name -> what it stands for: `import pickle as p` (p -> pickle), `from pickle
    import loads as l` (l -> pickle.loads). Later bindings win, as they do when run."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                local = alias.asname or alias.name.split(".")[0]
                names[local] = alias.name if alias.asname else local
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _resolve(node: ast.expr, aliases: dict[str, str]) -> str:
    dotted = _dotted(node)
    head, _, rest = dotted.partition(".")
    full = aliases.get(head, head)
    return f"{full}.{rest}" if rest else full


def _truthy(node: ast.expr | None) -> bool:
    """True unless the value is a literal falsy constant (unknown values count as true)."""
    return node is not None and not (isinstance(node, ast.Constant) and not node.value)


def _call_finding(call: ast.Call, aliases: dict[str, str]) -> Finding | None:
    target = _resolve(call.func, aliases)
    keywords = {k.arg: k.value for k in call.keywords if k.arg}
    if target in CALL_RULES:
        rule, severity, message = CALL_RULES[target]
        return Finding(rule, call.lineno, severity, message)
    if target in SHELL_CALLS and _truthy(keywords.get("shell")):
        message = f"{target}(..., shell=True) lets the shell interpret the command"
        return Finding("shell", call.lineno, "high", message)
    if target == "yaml.load":
        loader = keywords.get("Loader", call.args[1] if len(call.args) > 1 else None)
        if loader is None or _resolve(loader, aliases) not in SAFE_YAML_LOADERS:
            message = "yaml.load() without a safe Loader can build any object: use yaml.safe_load"
            return Finding("yaml-load", call.lineno, "medium", message)
    return None


def _secret_pairs(node: ast.AST) -> Iterator[tuple[str, ast.expr]]:
    """(name, value) pairs a secret could be hard-coded in: assignments, keyword arguments,
    dict literals and parameter defaults."""
    if isinstance(node, ast.Assign):
        for target in node.targets:
            yield _dotted(target).rpartition(".")[2], node.value
    elif isinstance(node, ast.AnnAssign) and node.value is not None:
        yield _dotted(node.target).rpartition(".")[2], node.value
    elif isinstance(node, ast.Call):
        yield from ((k.arg, k.value) for k in node.keywords if k.arg)
    elif isinstance(node, ast.Dict):
        for key, value in zip(node.keys, node.values, strict=True):
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                yield key.value, value
    elif isinstance(node, ast.arguments):
        positional = [*node.posonlyargs, *node.args]
        defaults = zip(
            positional[len(positional) - len(node.defaults) :], node.defaults, strict=True
        )
        keyword = zip(node.kwonlyargs, node.kw_defaults, strict=True)
        yield from ((a.arg, d) for a, d in (*defaults, *keyword) if d is not None)


def _secret_finding(node: ast.AST) -> Iterator[Finding]:
    for name, value in _secret_pairs(node):
        literal = value.value if isinstance(value, ast.Constant) else None
        if isinstance(literal, str) and literal and SECRET_NAME.search(name):
            message = f"{name!r} is a string literal: read secrets from the environment"
            yield Finding("hardcoded-secret", value.lineno, "medium", message)


def security_scan(code: str) -> SecurityResult:
    """Dangerous calls (eval/exec, pickle, shell commands, unsafe yaml.load), with imports
    resolved through their aliases, and hard-coded secrets."""
    tree = _tree(code)
    aliases = _aliases(tree)
    findings = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and (finding := _call_finding(node, aliases)):
            findings.append(finding)
        findings.extend(_secret_finding(node))
    findings.sort(key=lambda f: (f.line, f.rule))
    return SecurityResult(findings)


def _grade(average: float, findings: list[Finding]) -> str:
    """Radon's rank of the average complexity, two letters lower per high finding, one per medium."""
    letters = "ABCDEF"
    start = letters.index(rank(round(average)))
    penalty = sum({"high": 2, "medium": 1}.get(f.severity, 0) for f in findings)
    return letters[min(start + penalty, len(letters) - 1)]


def generate_report(
    parsed: ParseResult, complexity: ComplexityResult, security: SecurityResult
) -> Report:
    """The steps' results in one verdict: counts, a grade, the worst functions, the
    findings by severity and a short markdown text."""
    worst = sorted(complexity.functions, key=lambda f: (-f.complexity, f.line))[:WORST_SHOWN]
    summary = Summary(
        lines=parsed.line_count,
        functions=len(parsed.functions),
        classes=len(parsed.classes),
        imports=len(parsed.imports),
        average_complexity=complexity.average,
        max_complexity=complexity.most_complex.complexity if complexity.most_complex else 0,
        findings=len(security.findings),
    )
    by_severity = {s: [f for f in security.findings if f.severity == s] for s in SEVERITIES}
    report = Report(_grade(complexity.average, security.findings), summary, worst, by_severity)
    return msgspec.structs.replace(report, markdown=_markdown(report))


def _markdown(report: Report) -> str:
    summary, worst = report.summary, report.worst_functions
    lines = [
        f"# Code analysis: grade {report.grade}",
        "",
        f"{summary.lines} lines, {summary.functions} functions, {summary.classes} classes, "
        f"{summary.imports} imports; average complexity {summary.average_complexity} "
        f"(max {summary.max_complexity}); {summary.findings} security findings.",
    ]
    if worst:
        lines += ["", "## Most complex functions", ""]
        lines += [f"- `{f.name}` (line {f.line}): {f.complexity} ({f.rank})" for f in worst]
    if summary.findings:
        lines += ["", "## Security findings", ""]
        for found in report.findings_by_severity.values():
            lines += [f"- **{f.severity}** line {f.line} `{f.rule}`: {f.message}" for f in found]
    return "\n".join(lines) + "\n"
