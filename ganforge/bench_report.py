"""The report of a bench (:mod:`ganforge.bench`), from its Optuna study alone, so that any worker, or
``ganforge bench --report NAME``, writes the same files: ``report.json`` (every number),
``report.md`` (per dataset, each loss's mean and 95% interval over seeds per metric, the differences
beyond the seed spread, each cell's command) and ``report.png`` (per dataset and metric, each seed's
value and the interval)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ganforge import plotting, rundir
from ganforge.metrics import HIGHER_IS_BETTER

LEVEL = 0.95  # of the intervals


def interval(values: list) -> dict:
    """Mean and its ``LEVEL`` Student-t interval over seeds: mean ± t(n-1) s / sqrt(n) (none for one value, or
    when a value is not finite: a reverse KL is infinite when no sample is near a mode)."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2 or not np.isfinite(x).all():
        return {"mean": mean, "low": None, "high": None, "n": len(x)}
    half = float(stats.t.ppf(0.5 + LEVEL / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": len(x)}


def difference(a: list, b: list) -> dict | None:
    """Welch's ``LEVEL`` interval of mean(a) - mean(b) (unequal variances, Welch-Satterthwaite degrees of
    freedom); ``beyond``: the interval excludes 0, the difference is beyond the seed spread. None with
    fewer than 2 values on a side, or one not finite."""
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return None
    diff = float(a.mean() - b.mean())
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb == 0:  # no spread on either side: any difference is beyond it
        return {"difference": diff, "low": diff, "high": diff, "beyond": diff != 0}
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + LEVEL / 2, df) * math.sqrt(va + vb))
    return {"difference": diff, "low": diff - half, "high": diff + half, "beyond": abs(diff) > half}


def higher_is_better(metric: str) -> bool:
    return metric.partition("@")[0] in HIGHER_IS_BETTER


def cells(study, cell_of) -> tuple:
    """``(finished, tries)``: each cell's first complete trial, and how many trials each cell took
    (a killed worker's cell counts twice), keyed by (loss, dataset, seed)."""
    from optuna.trial import TrialState

    finished, tries = {}, {}
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if t.state == TrialState.PRUNED:  # gave way to another trial of the same cell
            continue
        cell = cell_of(t)
        tries[cell] = tries.get(cell, 0) + 1
        if t.state == TrialState.COMPLETE and cell not in finished:
            finished[cell] = t.user_attrs
    return finished, tries


def build(study, cell_of) -> dict:
    """The report's content (report.json) from the bench's study."""
    attrs = study.user_attrs
    definition = attrs["bench"]
    finished, tries = cells(study, cell_of)
    losses = [loss for loss in definition["losses"] if any(c[0] == loss for c in finished)]
    datasets = [d for d in definition["datasets"] if d in attrs["protocols"]]
    rows, missing, versions = [], [], {}
    for dataset in datasets:
        for loss in definition["losses"]:
            for seed in range(definition["seeds"]):
                cell = (loss, dataset, seed)
                if cell not in finished:
                    if loss in losses or not attrs["refused"]:
                        missing.append(f"{loss} on {dataset}, seed {seed}")
                    continue
                done = finished[cell]
                rows.append({"loss": loss, "dataset": dataset, "seed": seed, "tries": tries[cell],
                             **{k: done[k] for k in ("outcome", "line", "metrics", "train_seconds", "steps",
                                                     "command", "run_dir", "host") if k in done}})
                for package, version in done.get("versions", {}).items():
                    versions.setdefault(package, set()).add(version)
    return {"bench": study.study_name, "command": attrs["command"], "definition": definition,
            "refused": attrs["refused"], "versions": {k: sorted(v) for k, v in sorted(versions.items())},
            "cells": rows, "missing": missing,
            "datasets": {d: summary([r for r in rows if r["dataset"] == d], losses) for d in datasets}}


def summary(rows: list, losses: list) -> dict:
    """One dataset's table: per loss, each metric's interval over its finished seeds and the mean training
    time; and every pair of losses compared per metric."""
    ok = [r for r in rows if r["outcome"] == "ok"]
    metrics = list(dict.fromkeys(m for r in ok for m in r["metrics"]))
    values = {(loss, m): [r["metrics"][m] for r in ok if r["loss"] == loss and m in r["metrics"]]
              for loss in losses for m in metrics}
    table = {}
    for loss in losses:
        mine = [r for r in rows if r["loss"] == loss]
        if not mine:
            continue
        table[loss] = {"seeds": len([r for r in mine if r["outcome"] == "ok"]),
                       "not_ok": [f"seed {r['seed']}: {r['outcome']}: {r.get('line', '')}" for r in mine
                                  if r["outcome"] != "ok"],
                       "train_seconds": float(np.mean([r["train_seconds"] for r in mine])),
                       "metrics": {m: {**interval(values[loss, m]), "values": values[loss, m]}
                                   for m in metrics if values[loss, m]}}
    pairs = []
    for m in metrics:
        for a, b in ((a, b) for i, a in enumerate(losses) for b in losses[i + 1:]):
            compared = difference(values[a, m], values[b, m])
            if compared is not None:
                pairs.append({"metric": m, "a": a, "b": b, **compared})
    return {"metrics": metrics, "higher_is_better": {m: higher_is_better(m) for m in metrics},
            "losses": table, "pairs": pairs}


def _num(x) -> str:
    return "-" if x is None else f"{x:.4g}"


def markdown(report: dict) -> str:
    d = report["definition"]
    budget = (f"{d['steps']} steps" if d["steps"] else f"{d['budget_minutes']:g} minutes of training"
              if d["budget_minutes"] else "the recipes' steps")
    lines = [f"# Bench {report['bench']}", "", f"    {report['command']}", "",
             f"{len(report['cells'])} cells finished ({sum(r['outcome'] == 'ok' for r in report['cells'])} scored), "
             f"{d['seeds']} seeds per loss and dataset, {budget} per cell, "
             + ("one shared config per dataset (--same-settings)." if d["same_settings"] else
                "each loss with the recipes that apply to it."),
             "Versions: " + ", ".join(f"{k} {'/'.join(v)}" for k, v in report["versions"].items()) + ".", ""]
    for line in report["refused"]:
        lines.append(f"- not run: {line}")
    for cell in report["missing"]:
        lines.append(f"- not finished yet: {cell}")
    lines += [""] if report["refused"] or report["missing"] else []
    for dataset, s in report["datasets"].items():
        arrows = {m: "↑" if s["higher_is_better"][m] else "↓" for m in s["metrics"]}
        lines += [f"## {dataset}", "", f"Mean and {LEVEL:.0%} interval over seeds (Student's t).", "",
                  "| loss | " + " | ".join(f"{m} {arrows[m]}" for m in s["metrics"]) + " | train time | seeds |",
                  "| --- |" + " --- |" * (len(s["metrics"]) + 2)]
        for loss, row in s["losses"].items():
            cells = [f"{_num(row['metrics'][m]['mean'])} [{_num(row['metrics'][m]['low'])}, "
                     f"{_num(row['metrics'][m]['high'])}]" if m in row["metrics"] else "-" for m in s["metrics"]]
            lines.append(f"| {loss} | " + " | ".join(cells) + f" | {rundir.duration(row['train_seconds'])} | "
                         f"{row['seeds']} |")
        lines.append("")
        for loss, row in s["losses"].items():
            lines += [f"- {loss}, {line}" for line in row["not_ok"]]
        beyond = [p for p in s["pairs"] if p["beyond"]]
        lines += ["", f"Differences beyond the seed spread (Welch's {LEVEL:.0%} interval of the difference "
                  f"excludes 0): {len(beyond)} of {len(s['pairs'])} compared; about "
                  f"{len(s['pairs']) * (1 - LEVEL):.1f} would be by chance alone."]
        for p in beyond:
            better = p["a"] if (p["difference"] > 0) == s["higher_is_better"][p["metric"]] else p["b"]
            lines.append(f"- {p['metric']}: {p['a']} - {p['b']} = {_num(p['difference'])} "
                         f"[{_num(p['low'])}, {_num(p['high'])}]: {better} is better")
        lines.append("")
    lines += ["## Cells", "", "| dataset | loss | seed | outcome | train time | steps | tries | command |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["cells"]:
        lines.append(f"| {r['dataset']} | {r['loss']} | {r['seed']} | {r['outcome']} | "
                     f"{rundir.duration(r['train_seconds'])} | {r.get('steps', '-')} | {r['tries']} | "
                     f"`{r['command']}` |")
    return "\n".join(lines) + "\n"


def picture(report: dict):
    """Per dataset (rows) and metric (columns): each loss's seeds as points, its interval as a bar."""
    from PIL import Image, ImageDraw

    panels = [(dataset, m, s) for dataset, s in report["datasets"].items() for m in s["metrics"]]
    if not panels:
        return Image.new("RGB", (320, 40), "white")
    columns = max(len(s["metrics"]) for s in report["datasets"].values())
    width, height = 320, 260
    out = Image.new("RGB", (width * columns, height * len(report["datasets"]) + 20), "white")
    losses = list(dict.fromkeys(loss for s in report["datasets"].values() for loss in s["losses"]))
    ImageDraw.Draw(out).text((6, 4), "losses: " + ", ".join(f"{i + 1} {n}" for i, n in enumerate(losses)),
                                      fill="black")
    for row, dataset in enumerate(report["datasets"]):
        s = report["datasets"][dataset]
        for col, m in enumerate(s["metrics"]):
            series = {losses.index(loss): r["metrics"][m] for loss, r in s["losses"].items() if m in r["metrics"]}
            img = plotting.intervals(series, title=f"{dataset}: {m} ({'higher' if s['higher_is_better'][m] else 'lower'}"
                                     " is better)", size=(width, height), count=len(losses))
            out.paste(img, (col * width, 20 + row * height))
    return out


def update(study, cell_of, directory: Path) -> tuple:
    """Build the report of ``study`` and write it to ``directory``, under a lock: of two workers ending at
    once on one machine, the last to write saw every cell the first saw. Returns (report, paths)."""
    import fcntl

    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".report.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        report = build(study, cell_of)
        return report, write(report, directory)


def write(report: dict, directory: Path) -> list:
    """report.json, report.md and report.png in ``directory``; returns their paths."""
    text = json.dumps(strict(report), indent=1, allow_nan=False) + "\n"
    paths = [rundir.atomic_write(directory / "report.json", lambda p: p.write_text(text)),
             rundir.atomic_write(directory / "report.md", lambda p: p.write_text(markdown(report))),
             rundir.atomic_write(directory / "report.png", lambda p: picture(report).save(p, format="png"))]
    return paths


def strict(value):
    """``value`` with its infinite and NaN floats as the strings "inf", "-inf", "nan": strict JSON."""
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, list):
        return [strict(v) for v in value]
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value
