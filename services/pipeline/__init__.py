"""The second example app: a code-analysis pipeline as a workflow (`bus up --app
services.pipeline:app`).

`code_analysis` takes `{code, language}` and runs `parse`, then `analyze_complexity` and
`security_scan` in parallel on the parsed source, then `generate_report` on all three; the
run's output is the report. The steps are the pure functions of `services.pipeline.analysis`,
run off the event loop. Source that does not parse fails `parse` at once (a syntax error is
no reason to retry: `PermanentError`) and the other steps are skipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import msgspec

from bus import App, PermanentError, RunContext, Step, Workflow

from . import analysis
from .analysis import AnalysisError, ComplexityResult, ParseResult, Report, SecurityResult

T = TypeVar("T")
MAX_CODE = 64 * 1024  # characters: the source travels in the run's events, tasks and view


class CodeInput(msgspec.Struct, frozen=True):
    """The workflow's input."""

    code: Annotated[str, msgspec.Meta(max_length=MAX_CODE)]
    language: Annotated[str, msgspec.Meta(min_length=1, max_length=32)] = "python"


class ReportInput(msgspec.Struct, frozen=True):
    parsed: ParseResult
    complexity: ComplexityResult
    security: SecurityResult


def _source(ctx: RunContext[CodeInput]) -> CodeInput:
    return ctx.input


def _report_input(ctx: RunContext[CodeInput]) -> ReportInput:
    return ReportInput(
        ctx.output("parse", ParseResult),
        ctx.output("analyze_complexity", ComplexityResult),
        ctx.output("security_scan", SecurityResult),
    )


app = App("pipeline")
code_analysis = app.workflow(
    Workflow(
        "code_analysis",
        CodeInput,
        [
            Step("parse", "parse", input=_source, timeout=30),
            Step(
                "analyze_complexity",
                "analyze_complexity",
                ("parse",),
                _source,
                retries=2,
                timeout=30,
            ),
            Step("security_scan", "security_scan", ("parse",), _source, retries=2, timeout=30),
            Step(
                "generate_report",
                "generate_report",
                ("analyze_complexity", "security_scan"),
                _report_input,
                retries=2,
                timeout=30,
            ),
        ],
        output=lambda ctx: ctx.output("generate_report", Report),
    )
)


async def _off_loop(fn: Callable[..., T], *args: Any) -> T:
    """Run a CPU-bound analysis in a thread; its AnalysisError is permanent."""
    try:
        return await asyncio.to_thread(fn, *args)
    except AnalysisError as exc:
        raise PermanentError(str(exc)) from exc


@app.action("parse")
async def parse(source: CodeInput) -> ParseResult:
    return await _off_loop(analysis.parse, source.code, source.language)


@app.action("analyze_complexity")
async def analyze_complexity(source: CodeInput) -> ComplexityResult:
    return await _off_loop(analysis.analyze_complexity, source.code)


@app.action("security_scan")
async def security_scan(source: CodeInput) -> SecurityResult:
    return await _off_loop(analysis.security_scan, source.code)


@app.action("generate_report")
async def generate_report(parts: ReportInput) -> Report:
    return await _off_loop(analysis.generate_report, parts.parsed, parts.complexity, parts.security)
