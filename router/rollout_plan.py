"""Rollout plans: what ``POST /admin/rollout`` accepts, validated like every admin input.

    >>> plan = parse_plan({"strategy": "canary", "steps": [5, 25, 50, 100], "interval_s": 30},
    ...                   candidate="v2", versions=["v1", "v2"], can_reload=False)
    >>> plan.steps
    (5, 25, 50, 100)
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from common.errors import Unprocessable
from metrics.analysis import Thresholds

PLAN_STRATEGIES = ("canary", "blue-green", "shadow-then-canary", "release-in-place")
_FIELDS = {
    "strategy", "steps", "interval_s", "min_requests", "max_failed_analyses", "thresholds",
    "manual_promotion", "candidate", "shadow_percent", "shadow_analyses", "bake_analyses",
    "preview_analysis", "release_version", "version", "reason", "require_evidence", "min_labels",
}
# A version label, as the model services name their artifact folders.
VERSION_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# The name plans used before latency had an absolute tolerance too: it sets max_latency_ratio.
LEGACY_THRESHOLDS = {"max_p99_ratio": "max_latency_ratio"}
_THRESHOLD_LIMITS = {
    "max_error_rate_increase": (0.0, 1.0),
    "max_latency_ratio": (1.0, 1000.0),
    "max_latency_increase_ms": (0.0, 3_600_000.0),
    "latency_quantile": (0.5, 0.999),
    "min_agreement": (0.0, 1.0),
    "confidence": (0.5, 0.9999),
    "max_error_rate": (0.0, 1.0),
    "agreement_abs_tol": (0.0, 1e12),
    "agreement_rel_tol": (0.0, 100.0),
    "max_accuracy_drop": (0.0, 1.0),
    "max_mae_increase": (0.0, 1e12),
}


@dataclass(frozen=True)
class RolloutPlan:
    """A validated plan for an automated rollout."""

    strategy: str
    candidate: str
    steps: tuple[int, ...] = (10, 25, 50, 100)
    interval_s: float = 30.0
    min_requests: int = 100  # per version in each step: at 20 req/s it catches +10 points of errors by 50 %
    max_failed_analyses: int = 1
    thresholds: Thresholds = field(default_factory=Thresholds)
    manual_promotion: bool = False
    shadow_percent: int = 100
    shadow_analyses: int = 1
    bake_analyses: int = 1
    preview_analysis: bool = False
    release_version: str | None = None
    # the version to release: loaded into the candidate's slot (release-in-place: stable's)
    # before the plan runs; None releases what the candidate's slot serves now
    version: str | None = None
    # the final promotion needs evidence that the candidate is within every tolerance
    require_evidence: bool = False
    # the quality check (thresholds max_accuracy_drop / max_mae_increase) passes only once each
    # version has this many labelled rows (POST /feedback) since the phase began. Its bounds are
    # anytime-valid, hence wide on few labels: at 500 per version a drop from 95 % to 75 %
    # accuracy is shown in about 90 % of rollouts, 95 % to 80 % in about a fifth (seeded
    # simulations in tests/metrics/test_quality_check.py); smaller drops need more labels, or
    # require_evidence, which waits for proof that the candidate is within the tolerance
    min_labels: int = 500

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["steps"] = list(self.steps)
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> RolloutPlan:
        doc = dict(doc)
        doc["steps"] = tuple(doc.get("steps", ()))
        given = {LEGACY_THRESHOLDS.get(k, k): v for k, v in doc.get("thresholds", {}).items()}
        doc["thresholds"] = Thresholds(**given)
        return cls(**doc)


def _number(doc: dict[str, Any], name: str, lo: float, hi: float, integer: bool) -> Any:
    value = doc[name]
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        raise Unprocessable(f'"{name}" must be {kind} from {lo:g} to {hi:g}, got {value!r}',
                            code="invalid_plan")
    return value


def _flag(doc: dict[str, Any], name: str) -> bool:
    if not isinstance(doc[name], bool):
        raise Unprocessable(f'"{name}" must be true or false', code="invalid_plan")
    return bool(doc[name])


def parse_plan(doc: dict[str, Any], *, candidate: str | None, versions: list[str],
               can_reload: bool, stable: str | None = None) -> RolloutPlan:
    """Validate a plan document; raises Unprocessable naming the first problem."""
    unknown = sorted(set(doc) - _FIELDS)
    if unknown:
        raise Unprocessable(f"unknown plan field(s) {unknown}; accepted: {', '.join(sorted(_FIELDS))}",
                            code="invalid_plan")
    strategy = doc.get("strategy")
    if strategy not in PLAN_STRATEGIES:
        raise Unprocessable(f"plan strategy {strategy!r} is unknown; valid: {', '.join(PLAN_STRATEGIES)}",
                            code="invalid_plan")
    version = doc.get("version")
    if version is not None and (not isinstance(version, str) or not VERSION_LABEL.match(version)):
        raise Unprocessable('"version" must name a packaged version, e.g. "v3" (1 to 64 of '
                            "A-Z a-z 0-9 . _ -)", code="invalid_plan")
    if strategy == "release-in-place":
        target = doc.get("version", doc.get("release_version", doc.get("candidate", candidate)))
        if not isinstance(target, str) or not VERSION_LABEL.match(target):
            raise Unprocessable('"version" must name the model version to load into stable\'s '
                                'service, e.g. "v2"', code="invalid_plan")
        if not can_reload:
            raise Unprocessable("release-in-place reloads stable's model service: set "
                                "ROUTER_MODEL_ADMIN_TOKEN to its MODEL_ADMIN_TOKEN", code="invalid_plan")
    else:
        target = doc.get("candidate", candidate)
        if not isinstance(target, str) or target not in versions:
            raise Unprocessable(f'"candidate" must be one of the slots: {", ".join(versions)}',
                                code="invalid_plan")
        if target == stable:
            raise Unprocessable(f"slot {target} is already stable; the candidate is the other slot",
                                code="invalid_plan")
        if version is not None and not can_reload:
            raise Unprocessable(f"releasing {version} loads it into slot {target}'s model service: "
                                "set ROUTER_MODEL_ADMIN_TOKEN to its MODEL_ADMIN_TOKEN",
                                code="invalid_plan")
    kwargs: dict[str, Any] = {"strategy": strategy, "candidate": target, "version": version}
    if "steps" in doc:
        steps = doc["steps"]
        if (not isinstance(steps, list) or not steps
                or any(isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= 100 for s in steps)
                or any(b <= a for a, b in zip(steps, steps[1:], strict=False)) or steps[-1] != 100):
            raise Unprocessable('"steps" must be increasing integer percents from 1 to 100, ending at '
                                f"100 (e.g. [5, 25, 50, 100]), got {steps!r}", code="invalid_plan")
        kwargs["steps"] = tuple(steps)
    for name, lo, hi, integer in (("interval_s", 0.1, 86_400, False), ("min_requests", 1, 10**7, True),
                                  ("min_labels", 1, 10**7, True),
                                  ("max_failed_analyses", 1, 1000, True), ("shadow_percent", 1, 100, True),
                                  ("shadow_analyses", 1, 1000, True), ("bake_analyses", 1, 1000, True)):
        if name in doc:
            kwargs[name] = _number(doc, name, lo, hi, integer)
    for name in ("manual_promotion", "preview_analysis", "require_evidence"):
        if name in doc:
            kwargs[name] = _flag(doc, name)
    if "thresholds" in doc:
        given = doc["thresholds"]
        if not isinstance(given, dict):
            raise Unprocessable('"thresholds" must be an object', code="invalid_plan")
        for old, new in LEGACY_THRESHOLDS.items():
            if old in given:
                if new in given:
                    raise Unprocessable(f'"{old}" is the old name of "{new}": give one of them',
                                        code="invalid_plan")
                given = {**{k: v for k, v in given.items() if k != old}, new: given[old]}
        bad = sorted(set(given) - set(_THRESHOLD_LIMITS))
        if bad:
            raise Unprocessable(f"unknown threshold(s) {bad}; accepted: {', '.join(_THRESHOLD_LIMITS)}",
                                code="invalid_plan")
        kwargs["thresholds"] = Thresholds(**{
            name: float(_number(given, name, *_THRESHOLD_LIMITS[name], integer=False)) for name in given
        })
    if strategy == "release-in-place":
        kwargs["release_version"] = kwargs["version"] = target
    return RolloutPlan(**kwargs)
