"""Great Expectations suites run on pandas frames, turned into per-row verdicts.

A suite is a list of (reason, expectation). Row-level expectations are run with
COMPLETE results, so every failing row comes back by index and can be quarantined
with the reason it failed; table-level expectations (schema, row counts) fail the
dataset as a whole.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache

import pandas as pd

logging.getLogger("great_expectations").setLevel(logging.WARNING)


@dataclass(frozen=True)
class Rule:
    reason: str
    expectation: object  # a great_expectations Expectation; typed loosely to keep GX import lazy


@dataclass
class RuleOutcome:
    reason: str
    expectation: str
    column: str | None
    success: bool
    unexpected_count: int
    element_count: int
    observed: object = None


@dataclass
class SuiteReport:
    suite: str
    outcomes: list[RuleOutcome] = field(default_factory=list)
    row_failures: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))
    table_failures: list[str] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return all(o.success for o in self.outcomes)

    def summary(self) -> dict[str, int]:
        return {o.reason: o.unexpected_count for o in self.outcomes if not o.success}

    def failure_message(self) -> str:
        parts = [f"{o.reason} ({o.expectation} on {o.column or 'table'}: {o.unexpected_count} of {o.element_count} rows)" for o in self.outcomes if not o.success and o.column]
        parts += self.table_failures
        return "; ".join(parts)


@lru_cache(maxsize=1)
def _context():
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
        analytics_enabled=False,
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    context.data_sources.add_pandas("driftloop")
    return context


def run_suite(frame: pd.DataFrame, suite_name: str, rules: list[Rule]) -> SuiteReport:
    import great_expectations as gx

    context = _context()
    source = context.data_sources.get("driftloop")
    asset_name = f"{suite_name}-frame"
    try:
        asset = source.get_asset(asset_name)
    except LookupError:
        asset = source.add_dataframe_asset(name=asset_name)
    try:
        batch_definition = asset.get_batch_definition("whole")
    except KeyError:
        batch_definition = asset.add_batch_definition_whole_dataframe("whole")
    try:
        context.suites.delete(suite_name)
    except Exception:  # noqa: BLE001 - GX raises a store-specific error type when the suite is absent
        pass
    suite = context.suites.add(gx.ExpectationSuite(name=suite_name))
    reasons: dict[str, str] = {}
    for rule in rules:
        added = suite.add_expectation(rule.expectation)
        reasons[added.id] = rule.reason

    frame = frame.reset_index(drop=True)
    batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
    result = batch.validate(suite, result_format={"result_format": "COMPLETE"})

    report = SuiteReport(suite=suite_name)
    for item in result.results:
        config = item.expectation_config
        reason = reasons.get(config.id, config.type)
        column = config.kwargs.get("column")
        detail = item.result or {}
        if item.exception_info and item.exception_info.get("raised_exception"):
            message = item.exception_info.get("exception_message", "expectation raised")
            report.outcomes.append(RuleOutcome(reason, config.type, column, False, len(frame), len(frame), message))
            report.table_failures.append(f"{reason}: {config.type} could not run: {message}")
            continue
        unexpected = detail.get("unexpected_index_list") or []
        report.outcomes.append(
            RuleOutcome(
                reason, config.type, column, bool(item.success),
                int(detail.get("unexpected_count", 0 if item.success else len(frame))),
                int(detail.get("element_count", len(frame))),
                detail.get("observed_value"),
            )
        )
        if item.success:
            continue
        if column is None:
            report.table_failures.append(f"{reason}: {config.type} failed (observed {detail.get('observed_value')!r})")
        for index in unexpected:
            report.row_failures[int(index)].append(reason)
    return report


class DatasetError(ValueError):
    """A dataset fails as a whole: wrong schema, nothing left, or too much of it bad."""


@dataclass
class Screened:
    kept: list[dict]
    rejected: list  # list[Rejected]
    reports: dict[str, SuiteReport]

    def reason_counts(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for row in self.rejected:
            counts[row.reason] += 1
        return dict(sorted(counts.items()))


def screen(
    rows: list[dict], frame: pd.DataFrame, suites: dict[str, list[Rule]], id_column: str, stage: str
) -> Screened:
    """Run every suite; rows failing a row-level rule are rejected with all their reasons."""
    from driftloop.data.records import Rejected, excerpt

    reports = {name: run_suite(frame, f"{stage}.{name}", rules) for name, rules in suites.items()}
    table_problems = [p for r in reports.values() for p in r.table_failures if not p.startswith("non_empty")]
    if table_problems:
        raise DatasetError(f"{stage}: dataset fails as a whole: {'; '.join(table_problems)}")
    columns = {o.reason: o for r in reports.values() for o in r.outcomes}
    failures: dict[int, list[str]] = defaultdict(list)
    for report in reports.values():
        for index, reasons in report.row_failures.items():
            failures[index].extend(reasons)
    kept, rejected = [], []
    for index, row in enumerate(rows):
        reasons = failures.get(index)
        if not reasons:
            kept.append(row)
            continue
        details = []
        for reason in reasons:
            outcome = columns[reason]
            value = frame.at[index, outcome.column] if outcome.column in frame.columns else None
            details.append(f"{reason}: {outcome.expectation} on {outcome.column}={excerpt(str(value), 120)!s}")
        rejected.append(
            Rejected(
                source=str(row.get(id_column, index)),
                reason=",".join(dict.fromkeys(reasons)),
                detail="; ".join(details),
                stage=stage,
                record_id=str(row.get(id_column, "")),
                excerpt=excerpt(str(row.get("text") or row.get("question") or row.get("messages") or ""), 160),
            )
        )
    return Screened(kept=kept, rejected=rejected, reports=reports)
