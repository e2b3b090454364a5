"""`sweep.md`: the sweep's tables, figures and a reading generated from the measured intervals."""

from __future__ import annotations

from typing import Any

from .model_card import STRATEGY_LABELS
from .sweep_config import SweepConfig
from .sweep_stats import verdict

METHOD_NAMES = {**STRATEGY_LABELS, "member_0": "member 0"}
TARGET_NAMES = {"ensemble": "ensembles", "soup": "uniform soups (BatchNorm recalibrated)"}


def _pct(stat: dict[str, Any] | None, std: bool = True) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    text = f"{100 * stat['mean']:.2f}"
    return f"{text} ± {100 * stat['std']:.2f}" if std else text


def _num(stat: dict[str, Any] | None, digits: int = 3, std: bool = True) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    text = f"{stat['mean']:.{digits}f}"
    return f"{text} ± {stat['std']:.{digits}f}" if std else text


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:g}"


def _points(interval: list[float] | None) -> str:
    return "n/a (1 seed)" if interval is None else f"[{100 * interval[0]:+.2f}, {100 * interval[1]:+.2f}]"


def config_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| method | LR ratio | epoch ratio | seeds | ensemble acc. (%) | ensemble NLL | ensemble ECE | soup acc. (%) "
        "| soup NLL | mean member acc. (%) | members 1.. − member 0 (pts) | diversity | L2 from member 0 "
        "| ÷ Local DE's | steps | member-epochs | train s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        drop = r["member_drop"]
        lines.append(
            f"| {METHOD_NAMES.get(r['method'], r['method'])} | {_ratio(r['lr_ratio'])} | {_ratio(r['epoch_ratio'])} "
            f"| {len(r['seeds'])} | {_pct(r['ensemble_accuracy'])} | {_num(r['ensemble_nll'])} "
            f"| {_num(r['ensemble_ece'])} | {_pct(r['soup_accuracy'])} | {_num(r['soup_nll'])} "
            f"| {_pct(r['mean_member_accuracy'])} | {_pct(drop)} | {_num(r['diversity'], 1)} "
            f"| {_num(r['distance_from_member_0'], 1)} | {_num(r['distance_ratio'], 2, std=False)} "
            f"| {_num(r['steps'], 0, std=False)} "
            f"| {_num(r['member_epochs'], 1, std=False)} | {_num(r['train_seconds'], 0, std=False)} |"
        )
    return "\n".join(lines)


def comparison_table(comparisons: list[dict[str, Any]], confidence: float) -> str:
    level = f"{100 * confidence:g}%"
    lines = [
        f"| combined as | A (best) | B (best) | A − B (pts, mean over seeds) | per seed | {level} CI over seeds "
        f"| {level} paired bootstrap CI over test examples | verdict |",
        "|---|---|---|---:|---|---:|---:|---|",
    ]
    for c in comparisons:
        d = c["difference"]
        if d is None:
            continue
        per_seed = ", ".join(f"{100 * x:+.2f}" for x in d["per_seed"])
        lines.append(
            f"| {c['target']} | {c['a']} | {c['b']} | {100 * d['mean']:+.2f} | {per_seed} | {_points(d['seed_ci'])} "
            f"| {_points(d['bootstrap_ci'])} | {verdict(d)} |"
        )
    return "\n".join(lines)


def per_config_table(per_config: list[dict[str, Any]]) -> str:
    lines = [
        "| configuration | StarSSE − SSE, ensemble (pts) | CI over seeds | bootstrap CI | StarSSE − SSE, soup (pts) "
        "| CI over seeds | bootstrap CI |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for item in per_config:
        cells = []
        for target in ("ensemble", "soup"):
            d = item[target]
            cells += (
                ["–"] * 3
                if d is None
                else [f"{100 * d['mean']:+.2f}", _points(d["seed_ci"]), _points(d["bootstrap_ci"])]
            )
        lines.append(f"| {item['star_sse'].replace('star_sse-', '')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reading(report: dict[str, Any], confidence: float) -> list[str]:
    """Sentences stating which orderings hold at the given confidence (both intervals exclude 0) and which do not."""
    level = f"{100 * confidence:g}%"
    out = []
    for c in report["comparisons"]:
        d = c["difference"]
        if d is None:
            continue
        a, b = (METHOD_NAMES[c[k].split("-")[0]] for k in ("a", "b"))
        v = verdict(d)
        claim = {
            "holds": f"{a} > {b} holds at {level}",
            "reversed": f"the opposite holds at {level}: {b} > {a}",
            "not resolved": f"{a} > {b} is not established at {level} (an interval includes 0)",
        }[v]
        out.append(
            f"- **{TARGET_NAMES[c['target']]}, {a} ({c['a']}) vs {b} ({c['b']})**: {100 * d['mean']:+.2f} points; "
            f"CI over seeds {_points(d['seed_ci'])}, paired bootstrap {_points(d['bootstrap_ci'])}: {claim}."
        )
    out += _locality_reading(report["locality"])
    return out


SEMI_LOCAL_DISTANCE = 0.5  # the rule of the reading: members 1.. at least half as far from member 0 as Local DE's


def _locality_reading(locality: list[dict[str, Any]]) -> list[str]:
    """Per method and epoch ratio: which LR ratios keep the members near member 0 (local) and from which one they
    move at least `SEMI_LOCAL_DISTANCE` of the way that independent fine-tunings are apart (semi-local), with what
    that does to their accuracy against member 0 (interval over seeds)."""
    out = []
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for item in locality:
        groups.setdefault((item["method"], item["epoch_ratio"]), []).append(item)
    for (method, epoch_ratio), items in groups.items():
        items = sorted(items, key=lambda i: i["lr_ratio"])
        measured = [i for i in items if i["distance_ratio"] is not None]
        if not measured:
            continue
        local = [i for i in measured if i["distance_ratio"] < SEMI_LOCAL_DISTANCE]
        semi = [i for i in measured if i["distance_ratio"] >= SEMI_LOCAL_DISTANCE]
        parts = []
        if local:
            parts.append("local at LR ratio " + ", ".join(_locality_item(i) for i in local))
        if semi:
            items_text = ", ".join(_locality_item(i) for i in semi)
            parts.append(f"semi-local from LR ratio {semi[0]['lr_ratio']:g}: {items_text}")
        out.append(f"- **{METHOD_NAMES[method]}, epoch ratio {epoch_ratio:g}**: " + "; ".join(parts) + ".")
    if out:
        out.insert(
            0,
            f"- Locality (rule: a configuration is semi-local when members 1.. are on average at least "
            f"{SEMI_LOCAL_DISTANCE:g} times as far from member 0, in L2, as Local DE's members are from its member 0; "
            f"each item: LR ratio, that distance ratio, members 1.. − member 0 test accuracy with its interval over "
            f"seeds):",
        )
    return out


def _locality_item(item: dict[str, Any]) -> str:
    drop = f"{100 * item['member_drop']:+.2f} pts {_points(item['member_drop_ci'])}"
    return f"×{item['lr_ratio']:g} ({item['distance_ratio']:.2f}, {drop})"


def _first_fine_tuning_line(first: dict[str, Any]) -> str:
    train, test = first.get("train_accuracy") or [], first.get("test_accuracy") or []
    if not test:
        return ""
    text = ", ".join(f"{100 * a:.2f}" for a in test)
    if train:
        text = f"training accuracy {', '.join(f'{100 * a:.2f}' for a in train)} %; test accuracy {text}"
    return f"- Member 0 (the first fine-tuning) per seed: {text} %."


def format_report(report: dict[str, Any], config: SweepConfig) -> str:
    recipe = config.recipe
    sessions = report.get("sessions") or [{}]
    session = sessions[-1]
    total = sum(s.get("seconds", 0.0) for s in sessions)
    optimizer = " ".join(str(recipe.get(k) or "") for k in ("optim", "optim_args")).strip()
    ratios = {name: ", ".join(f"{r:g}" for r in getattr(config, name)) for name in ("lr_ratios", "epoch_ratios")}
    lines = [
        "# Sweep: SSE and StarSSE cycle ratios against Local DE",
        "",
        f"Command: `{report['command']}`" if report.get("command") else "",
        "",
        f"- Model `{recipe.get('model_name_or_path')}`, data `{recipe.get('dataset_name')}`; first fine-tuning: "
        f"LR {recipe.get('learning_rate')}, {recipe.get('num_train_epochs')} epochs, batch "
        f"{recipe.get('per_device_train_batch_size')}, optimizer {optimizer}.",
        f"- {config.num_members} members; seeds {', '.join(map(str, config.seeds))}; LR ratios {ratios['lr_ratios']}; "
        f"epoch ratios {ratios['epoch_ratios']}.",
        f"- Runs done: {report['num_runs_done']} of {report['num_runs_planned']}; test examples: "
        f"{report['num_test_examples']}.",
        _first_fine_tuning_line(report.get("first_fine_tuning") or {}),
        f"- Wall time: {total:.0f} s over {len(sessions)} `hf-starsse sweep` call(s); the last one took "
        f"{session.get('seconds', float('nan')):.0f} s and trained {len(session.get('trained', []))} run(s), "
        f"evaluated {len(session.get('evaluated', []))}, kept {len(session.get('kept', []))}.",
        "- Best configuration per method: chosen on the mean validation accuracy (the test split is not looked at). "
        "Per member 0, SSE and StarSSE of a seed start from the same first fine-tuning (Local DE's member 0).",
        "",
        "## Per configuration (mean ± std over seeds)",
        "",
        config_table(report["rows"]),
        "",
        "Member-epochs and steps charge SSE / StarSSE with member 0's fine-tuning. `L2 from member 0`: mean L2 "
        "distance of members 1.. from member 0 (weights, BatchNorm statistics left out); `÷ Local DE's`: the same "
        "divided by Local DE's of the same seed (how far independent fine-tunings are from each other).",
        "",
        "## Paired differences between each method's best configuration",
        "",
        comparison_table(report["comparisons"], config.confidence),
        "",
        "## StarSSE − SSE at each configuration",
        "",
        per_config_table(report["star_sse_minus_sse_per_config"]),
        "",
    ]
    if report.get("figures"):
        lines += ["## Figures", ""]
        lines += [f"![{name}]({path})" for name, path in report["figures"].items()]
        lines.append("")
    lines += ["## Reading (generated from the intervals above)", "", *reading(report, config.confidence), ""]
    return "\n".join(line for line in lines if line is not None)
