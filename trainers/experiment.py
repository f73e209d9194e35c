"""N seeds per arm, paired by seed: means with 95 % Student-t intervals, and paired differences.

An *arm* is a function seed -> metrics dict (one training run). Every arm runs on the same seeds,
so arm A on seed s and the reference arm on seed s share whatever the seed fixes (data order,
initialisation, augmentation). For each arm with values x_1..x_n (n seeds):

    mean  = (1/n) sum_i x_i
    s     = sqrt( sum_i (x_i - mean)^2 / (n - 1) )            (sample standard deviation)
    CI95  = mean -/+ t_{0.975, n-1} * s / sqrt(n)

and for each arm against the reference the same statistics of the paired differences
d_i = x_i(arm) - x_i(reference) over the same seeds (the paired t interval). A paired interval that
excludes 0 says the arm differs from the reference at the 5 % level.

Each finished (arm, seed) run is saved at once as `<out_dir>/<arm>/seed_<seed>.json`; a rerun with the
same out_dir loads those files instead of running them again, so an interrupted experiment resumes.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path

from labelstore.errors import ConfigError, DataError

_ARM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


# ---------------------------------------------------------------------------------------------
# Student-t quantile (no scipy): regularized incomplete beta by continued fraction + bisection
# ---------------------------------------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) = B(x; a, b) / B(a, b), for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """Student-t CDF: F(t) = 1 - I_{df/(df+t^2)}(df/2, 1/2) / 2 for t >= 0, symmetric for t < 0."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with t_cdf(t, df) = p, by bisection (to ~1e-12); e.g. t_quantile(0.975, 4) = 2.7764..."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ConfigError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:  # t_{0.975,1} = 12.7; heavier tails only for tiny df or extreme p
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


# ---------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------


def summarize(values: list[float], level: float = 0.95) -> dict:
    """mean, sample std s, n and the Student-t interval mean -/+ t_{(1+level)/2, n-1} s / sqrt(n).

    With n < 2 there is no spread to estimate: std and the interval are None.
    """
    n = len(values)
    if n == 0:
        raise ConfigError("summarize needs at least one value")
    mean = sum(values) / n
    if n < 2:
        return {"n": n, "mean": mean, "std": None, "ci95": None, "values": list(values)}
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.5 + level / 2.0, n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci95": [mean - half, mean + half], "values": list(values)}


# ---------------------------------------------------------------------------------------------
# runner
# ---------------------------------------------------------------------------------------------


def disk_bytes(path: str) -> int:
    """Bytes of every file under `path` (a store's size on disk)."""
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def with_recipe(defaults: dict, overrides: dict) -> dict:
    """An experiment's recipe: its `defaults` with the `--recipe` overrides; ConfigError naming
    every unknown key and the known ones."""
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ConfigError(f"--recipe: unknown recipe key(s) {unknown}; choose from {sorted(defaults)}")
    return {**defaults, **overrides}


def check_arms(names: list[str], arms: dict) -> None:
    """ConfigError naming the arms a task does not have."""
    unknown = sorted(set(names) - set(arms))
    if unknown:
        raise ConfigError(f"unknown arm(s) {unknown}: choose from {sorted(arms)}")


def read_setup(out: str | Path) -> dict | None:
    """An experiment's setup (data, teacher, store paths and figures) from out/setup.json, or None if it
    has none yet: a task makes its setup once per output directory and every arm and rerun reuses it."""
    path = Path(out) / "setup.json"
    if not path.exists():
        return None
    with open(path) as f:
        return json.load(f)


def write_setup(out: str | Path, meta: dict) -> None:
    with open(Path(out) / "setup.json", "w") as f:
        json.dump(meta, f, indent=1)


def _result_path(out_dir: Path, arm: str, seed: int) -> Path:
    return out_dir / arm / f"seed_{seed}.json"


def _load_run(path: Path, arm: str, seed: int, metric: str) -> dict:
    """A finished run's metrics from its file; a damaged or foreign file is an error naming it."""
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read a saved experiment run ({e}); delete it to rerun") from e
    if not isinstance(record, dict) or record.get("arm") != arm or record.get("seed") != seed:
        raise DataError(f"{path}: saved run is not arm {arm!r} seed {seed}; delete it to rerun")
    metrics = record.get("metrics")
    if not isinstance(metrics, dict) or metric not in metrics:
        raise DataError(f"{path}: saved run has no metric {metric!r}; delete it to rerun")
    return metrics


def _jsonable(o):
    """numpy / torch values as plain numbers or lists, anything else (paths) as its string."""
    return o.tolist() if hasattr(o, "tolist") else str(o)


def _save_run(path: Path, arm: str, seed: int, metrics: dict) -> None:
    """Write atomically (temp file + rename), so an interruption never leaves half a result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    record = {"arm": arm, "seed": seed, "metrics": metrics}
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True, default=_jsonable))
    os.replace(tmp, path)


def _metric_value(metrics: dict, metric: str, arm: str, seed: int) -> float:
    if not isinstance(metrics, dict) or metric not in metrics:
        raise DataError(f"arm {arm!r} seed {seed}: the run returned no metric {metric!r}")
    value = float(metrics[metric])
    if not math.isfinite(value):
        raise DataError(f"arm {arm!r} seed {seed}: metric {metric!r} is {value}")
    return value


def run_experiment(
    arms: dict[str, Callable[[int], dict]],
    seeds: list[int],
    metric: str,
    reference: str,
    out_dir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Run every arm on every seed (seed-major, so a stopped experiment has comparable partial arms).

    arms: name -> (seed -> metrics dict); seeds: shared by all arms; metric: the key summarised;
    reference: the arm the paired differences are taken against. With out_dir, finished
    (arm, seed) runs are saved there and loaded instead of rerun. Returns a JSON-ready dict:

        {"metric", "reference", "seeds",
         "arms":  {name: {"n", "mean", "std", "ci95", "values", "seeds"}},
         "paired": {name != reference: same fields for d_s = x_s(name) - x_s(reference)}}
    """
    if reference not in arms:
        raise ConfigError(f"reference arm {reference!r} is not one of the arms {sorted(arms)}")
    if not seeds:
        raise ConfigError("an experiment needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct, got {seeds}")
    for name in arms:
        if not _ARM_NAME.match(name):
            raise ConfigError(f"arm name {name!r}: use letters, digits and _ . + - (it names a directory)")
    out = Path(out_dir) if out_dir is not None else None

    values: dict[str, dict[int, float]] = {name: {} for name in arms}
    for seed in seeds:
        for name, run in arms.items():
            path = _result_path(out, name, seed) if out is not None else None
            if path is not None and path.exists():
                metrics = _load_run(path, name, seed, metric)
                if log:
                    log(f"[{name} seed {seed}] loaded {path}")
            else:
                if log:
                    log(f"[{name} seed {seed}] running")
                metrics = run(seed)
                _metric_value(metrics, metric, name, seed)  # refuse before saving a useless run
                if path is not None:
                    _save_run(path, name, seed, metrics)
            values[name][seed] = _metric_value(metrics, metric, name, seed)
            if log:
                log(f"[{name} seed {seed}] {metric} = {values[name][seed]:.4f}")

    result = {"metric": metric, "reference": reference, "seeds": list(seeds), "arms": {}, "paired": {}}
    for name in arms:
        result["arms"][name] = {**summarize([values[name][s] for s in seeds]), "seeds": list(seeds)}
    for name in arms:
        if name != reference:
            diffs = [values[name][s] - values[reference][s] for s in seeds]  # same seed on both sides
            result["paired"][name] = {**summarize(diffs), "seeds": list(seeds)}
    return result


def _fmt_ci(stats: dict) -> str:
    if stats["ci95"] is None:
        return "n/a (n < 2)"
    lo, hi = stats["ci95"]
    return f"[{lo:.3f}, {hi:.3f}]"


def format_table(result: dict, invocation: str) -> str:
    """A plain-text table: the exact invocation, then per arm n, mean, std, 95 % interval, and the
    paired difference to the reference with its 95 % interval (within one run, the same seeds)."""
    ref = result["reference"]
    lines = [
        f"$ {invocation}",
        f"metric: {result['metric']}   seeds: {result['seeds']}   reference: {ref}"
        f"   (95 % Student-t intervals; differences paired by seed)",
        f"{'arm':<20} {'n':>3} {'mean':>9} {'std':>8}  {'95% CI':<20} {'diff vs ' + ref:>12}  {'95% CI of diff':<20}",
    ]
    for name, stats in result["arms"].items():
        std = "n/a" if stats["std"] is None else f"{stats['std']:.3f}"
        if name == ref:
            diff, diff_ci = "(reference)", ""
        else:
            paired = result["paired"][name]
            diff, diff_ci = f"{paired['mean']:+.3f}", _fmt_ci(paired)
        lines.append(
            f"{name:<20} {stats['n']:>3} {stats['mean']:>9.3f} {std:>8}  {_fmt_ci(stats):<20} {diff:>12}  {diff_ci:<20}"
        )
    return "\n".join(lines)


def save_json(result: dict, path: str | Path, invocation: str) -> None:
    """The result dict plus the invocation, as JSON (strict: no NaN)."""
    Path(path).write_text(json.dumps({"invocation": invocation, **result}, indent=1, allow_nan=False))
