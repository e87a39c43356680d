"""``before_after`` and ``load_test``: the judged window against earlier windows of the same series.

Each reference window (before the deploy, the same hours a day and a week earlier; or the earlier load
test run) gets its own :class:`~engine.verification.judge.Judge`, in which step ``t`` of the judged window
is paired with step ``t - offset`` of the reference: the same sign e-processes and rate tests as a canary,
on time-shifted pairs instead of simultaneous ones.

The verdict is an *intersection-union* test: the new version fails only once it has regressed against
**every** reference that has data. Its null, "the new version is as good as at least one reference",
holds when it is as good as some reference r; then the fail needs r's judge to fail, which happens with
probability at most alpha however often it is looked at (r's judge is anytime-valid). So the fail rate
stays alpha with no split of alpha over the references. A value normal at this hour yesterday is not a
regression against yesterday, so a daily pattern passes.

Assumptions, stated honestly: within a reference, the paired differences of successive (strided) steps
are independent with median 0 when nothing changed, i.e. the series at ``t`` and ``t - offset`` differ
only by noise. Against the window before the deploy this is stationarity over the two windows (no trend,
no daily ramp); against a day or a week earlier it is a daily or weekly pattern plus noise. A reference
only needs to satisfy it for the guarantee when the new version is as good as that reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from engine.verification.judge import Judge, MetricReport, MetricSpec, Observation, Outcome, Settings, Verdict


class AgainstReferences:
    """One judge per reference window; :meth:`look` one step of each, :meth:`verdict` the combined one."""

    def __init__(self, specs: Sequence[MetricSpec], settings: Settings, references: Sequence[str]) -> None:
        if not references:
            raise ValueError("nothing to compare with: no reference windows")
        self.judges = {name: Judge(specs, settings) for name in references}
        self.failed: Verdict | None = None

    def _present(self) -> list[str]:
        """The references with data for some metric so far."""
        return [
            name
            for name, judge in self.judges.items()
            if any(state.baseline_steps for state in judge.states.values())
        ]

    def look(self, at_ms: int, seen: Mapping[str, Mapping[str, Observation]]) -> Outcome | None:
        """One step: ``seen[reference]`` pairs the judged window's values with that reference's."""
        for name, judge in self.judges.items():
            judge.look(at_ms, seen.get(name, {}))
        if self.failed is None:
            present = self._present()
            if present and all(self.judges[r].failed is not None for r in present):
                self.failed = self.verdict(final=False)
        return Outcome.FAIL if self.failed is not None else None

    def verdict(self, *, final: bool = True) -> Verdict:
        present = self._present()
        absent = [r for r in self.judges if r not in present]
        if not present:
            steps = max(j.steps for j in self.judges.values())
            reason = "not enough data: no data in any reference window (" + ", ".join(absent) + ")"
            outcome, at = (Outcome.INCONCLUSIVE, None) if final else (None, None)
            return Verdict(outcome, final, reason if final else "still judging", None, at, steps, (), (), ())
        each = {r: self.judges[r].verdict(final=final) for r in present}
        if self.failed is not None and final:
            # a fail is final when it is decided; the reports keep the latest evidence
            first = self.failed
            return Verdict(
                Outcome.FAIL,
                True,
                first.reason,
                first.score,
                first.decided_at_ms,
                max(v.steps for v in each.values()),
                self._metrics(each),
                (),
                first.missing,
            )
        missing = tuple(f"{r}: {m}" for r, v in each.items() for m in v.missing)
        missing += tuple(f"{r}: no data" for r in absent)
        steps = max(v.steps for v in each.values())
        scores = [v.score for v in each.values() if v.score is not None]
        score = max(scores) if scores else None
        metrics = self._metrics(each)
        if all(v.outcome is Outcome.FAIL for v in each.values()):
            reason = "regressed against every reference: " + "; ".join(
                f"{r}: {v.reason.removeprefix('canary regressed: ')}" for r, v in each.items()
            )
            decided = [v.decided_at_ms for v in each.values() if v.decided_at_ms is not None]
            return Verdict(
                Outcome.FAIL, True, reason, score, max(decided, default=None), steps, metrics, (), missing
            )
        if not final:
            return Verdict(None, False, "still judging", score, None, steps, metrics, (), missing)
        passed = [r for r, v in each.items() if v.outcome is Outcome.PASS]
        if passed:
            others = [
                f"{r}: {v.reason.removeprefix('canary regressed: ')}"
                for r, v in each.items()
                if r not in passed
            ]
            reason = "as good as " + " and ".join(passed) + (f" (but {'; '.join(others)})" if others else "")
            if absent:
                reason += f"; no data {', '.join(absent)}"
            return Verdict(
                Outcome.PASS,
                True,
                reason,
                score,
                max(j.last_ms or 0 for j in self.judges.values()),
                steps,
                metrics,
                (),
                missing,
            )
        reason = "not enough data: " + "; ".join(f"{r}: {v.reason}" for r, v in each.items())
        return Verdict(
            Outcome.INCONCLUSIVE,
            True,
            reason,
            score,
            max(j.last_ms or 0 for j in self.judges.values()),
            steps,
            metrics,
            (),
            missing,
        )

    @staticmethod
    def _metrics(each: Mapping[str, Verdict]) -> tuple[MetricReport, ...]:
        """Per metric the intersection-union view: a regression only if one against every reference,
        reported with the weakest evidence among them; else the report of a reference it is not worse than."""
        names = [m.name for m in next(iter(each.values())).metrics]
        out = []
        for name in names:
            reports = [m for v in each.values() for m in v.metrics if m.name == name]
            judged = [m for m in reports if m.samples]
            if not judged:
                out.append(reports[0])
            elif all(m.regression for m in judged):
                out.append(min(judged, key=lambda m: m.e_value))
            else:
                out.append(next(m for m in judged if not m.regression))
        return tuple(out)
