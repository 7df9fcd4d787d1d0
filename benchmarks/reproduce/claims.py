"""The paper's claims as verdicts computed from result rows (``claims``), and as Markdown
(``claims_markdown``)."""

from __future__ import annotations

import math

from .presets import (
    MAIN_METRIC,
    MOVEMENT_VARIANTS,
    TASK_LABELS,
    TASKS,
    VARIANT_ORDER,
    VARIANTS,
    row_variant,
)

HIGH_TARGET, LOW_TARGET = (0.1, 0.03), 0.5
NOISE_POINTS = 2.0  # one seed, SST-2 dev (872 sentences): one standard error is ~1.4 points
CHANCE = {"sst2": 0.52}  # the majority class is 50.9% of SST-2 dev
FAR = 1.5  # a lambda variant that kept more than FAR x its target is not "at" that target


def _cell(rows, task, variant, distill, target):
    """Mean main metric and remaining weights over the seeds of one (variant, distillation,
    target) of ``task``, or None when no such row exists."""
    main = MAIN_METRIC[task]
    group = [r for r in rows if r["task"] == task and row_variant(r) == variant
             and r["distill"] == distill and r.get("target") is not None
             and math.isclose(float(r["target"]), target, rel_tol=1e-6)
             and r.get(main) is not None]
    if not group:
        return None
    n = len(group)
    return {"task": task, "variant": variant, "distill": distill, "target": target, "n": n,
            "metric": sum(float(r[main]) for r in group) / n,
            "remaining": sum(float(r["remaining_weights"]) for r in group) / n}


def pct(x):
    return f"{100 * x:g}%"


def _describe(c):
    kd = " + distillation" if c["distill"] == "yes" else ""
    seeds = f", mean of {c['n']} seeds" if c["n"] > 1 else ""
    return (f"{VARIANTS[c['variant']].label}{kd} {100 * c['metric']:.1f}% "
            f"({100 * c['remaining']:.2f}% remaining{seeds})")


def _versus(task, a, others, slack=0.0):
    """(verdict, detail): held when ``a`` is strictly above every row of ``others`` (with
    ``slack`` points: when it is less than ``slack`` below the best of them, "as good")."""
    best = max(others, key=lambda c: c["metric"])
    delta = round(100 * (a["metric"] - best["metric"]), 6)  # no float noise in ties
    verdict = "held" if delta > -slack else "not held"
    detail = f"{_describe(a)} vs " + ", ".join(_describe(o) for o in others)
    detail += f"; Δ {delta:+.1f} points" + (f" vs {VARIANTS[best['variant']].label}"
                                            + (" + distillation" if best["distill"] == "yes"
                                               else "") if len(others) > 1 else "")
    notes = []
    if abs(delta) < NOISE_POINTS:
        notes.append(f"margin under {NOISE_POINTS:g} points: within single-seed noise")
    chance = CHANCE.get(task)
    if chance is not None and a["metric"] <= chance and best["metric"] <= chance:
        notes.append("both at the majority class")
    elif chance is not None and a["metric"] <= chance:
        notes.append(f"{VARIANTS[a['variant']].label}"
                     f"{' + distillation' if a['distill'] == 'yes' else ''} is at the majority class")
    if notes:
        detail += " (" + "; ".join(notes) + ")"
    return verdict, detail


def claims(rows, high=HIGH_TARGET, low=LOW_TARGET):
    """The paper's claims as verdicts computed from result rows (runs without distillation at
    the same target, main metric averaged over seeds): a list of dicts with task, claim,
    variant (the variant the statement is about; None where no run exists), verdict ("held",
    "not held", "not run" or "not comparable") and detail (the numbers)."""
    out = []
    for task in TASKS:
        trs = [r for r in rows if r["task"] == task]
        if not trs:
            continue

        def add(claim, variant, verdict, detail):
            out.append({"task": task, "claim": claim, "variant": variant, "verdict": verdict,
                        "detail": detail})

        def cell(variant, target, distill="no"):
            return _cell(trs, task, variant, distill, target)

        def others_at(target, but):
            """The other variants' cells at ``target``, without those that kept more than
            FAR x the target (a lambda that missed it), and a note naming those."""
            cells = [c for v in VARIANT_ORDER[1:] if v != but for c in [cell(v, target)] if c]
            far = [c for c in cells if c["remaining"] > FAR * target]
            note = "; left out, too far above the target: " + ", ".join(map(_describe, far)) \
                if far else ""
            return [c for c in cells if c not in far], note

        present = {row_variant(r) for r in trs}
        movements = [v for v in MOVEMENT_VARIANTS if v in present]
        L = pct(low)

        highs = tuple(high) if isinstance(high, (tuple, list)) else (high,)
        for h in highs:
            H = pct(h)
            claim = f"movement beats magnitude at {H}"
            mag = cell("magnitude", h)
            if not movements:
                add(claim, None, "not run", "no movement run")
            for v in movements:
                mv = cell(v, h)
                if mv is None or mag is None:
                    missing = [VARIANTS[m].label for m, c in ((v, mv), ("magnitude", mag))
                               if c is None]
                    add(claim, v, "not run", f"no run at {H} of " + " or ".join(missing))
                else:
                    add(claim, v, *_versus(task, mv, [mag]))
        H = pct(highs[-1])
        claim = f"soft movement is the best method at {H}"
        soft, (others, note) = (cell("soft_movement", highs[-1]),
                                others_at(highs[-1], "soft_movement"))
        if soft is None or not others:
            add(claim, "soft_movement", "not run",
                f"no soft movement run for {H}" if soft is None else f"no other method at {H}")
        elif soft["remaining"] > FAR * highs[-1]:
            add(claim, "soft_movement", "not comparable",
                f"its lambda missed the target: {_describe(soft)}; the others at {H}: "
                + ", ".join(_describe(o) for o in others))
        else:
            verdict, detail = _versus(task, soft, others)
            add(claim, "soft_movement", verdict, detail + note)

        claim = f"magnitude is as good as or better than the other methods at {L}"
        mag, (others, note) = cell("magnitude", low), others_at(low, "magnitude")
        if mag is None or not others:
            add(claim, "magnitude", "not run",
                f"no magnitude run at {L}" if mag is None else f"no other method at {L}")
        else:  # "as good": less than the noise margin below the best other method
            verdict, detail = _versus(task, mag, others, slack=NOISE_POINTS)
            add(claim, "magnitude", verdict, detail + note)

        claim = "distillation helps"
        pairs = sorted({(row_variant(r), float(r["target"])) for r in trs
                        if r["distill"] == "yes" and r.get("target") is not None},
                       key=lambda p: (VARIANT_ORDER.index(p[0]), p[1]))
        if not pairs:
            add(claim, None, "not run", "no run with distillation")
        for v, t in pairs:
            kd, no = cell(v, t, "yes"), cell(v, t, "no")
            if no is None:
                add(claim, v, "not run", f"no {VARIANTS[v].label} run without distillation "
                                         f"at {pct(t)} to compare with")
            elif max(kd["remaining"], no["remaining"]) > FAR * min(kd["remaining"],
                                                                   no["remaining"]):
                add(claim, v, "not comparable",
                    f"at {pct(t)}: {_describe(kd)} vs {_describe(no)}: lambda left them more "
                    f"than {FAR:g}x apart in remaining weights")
            else:
                verdict, detail = _versus(task, kd, [no])
                add(claim, v, verdict, f"at {pct(t)}: {detail}")

        claim = "movement beats the random control"
        targets = sorted({float(r["target"]) for r in trs if r.get("target") is not None
                          and r["distill"] == "no"
                          and row_variant(r) in (*MOVEMENT_VARIANTS, "random")})
        if not movements or not targets:
            add(claim, None, "not run", "no movement or random run")
        for v in movements:
            for t in targets:
                mv, rnd = cell(v, t), cell("random", t)
                if mv is None or rnd is None:
                    missing = [VARIANTS[m].label for m, c in ((v, mv), ("random", rnd))
                               if c is None]
                    add(f"{claim} at {pct(t)}", v, "not run",
                        f"no run at {pct(t)} of " + " or ".join(missing))
                else:
                    add(f"{claim} at {pct(t)}", v, *_versus(task, mv, [rnd]))
    return out


def claims_markdown(items):
    """The claims as Markdown: one bullet per computed statement, grouped by task."""
    if not items:
        return ""
    out = ["### Which of the paper's claims held (computed from the rows above)\n",
           "Each verdict compares the main metric (accuracy on SST-2, F1 on the SQuAD-dev "
           "split; mean over seeds) of runs without distillation at the same target (soft "
           "movement and L0: the target their lambda was searched for). \"held\": strictly "
           "higher; \"not run\": a run it needs is missing; \"not comparable\": a lambda method "
           f"kept more than {FAR:g}x its target (or, for distillation, the two runs are more "
           f"than {FAR:g}x apart in remaining weights); other methods that kept more than "
           f"{FAR:g}x the target are left out of a \"best method\" comparison. A margin under "
           f"{NOISE_POINTS:g} points is flagged: one seed on SST-2's 872 dev sentences cannot "
           "separate it.\n"]
    for task in TASKS:
        mine = [c for c in items if c["task"] == task]
        if not mine:
            continue
        out.append(f"**{TASK_LABELS[task]}**\n")
        for c in mine:
            who = f" [{VARIANTS[c['variant']].label}]" if c["variant"] else ""
            out.append(f"- {c['claim'][0].upper() + c['claim'][1:]}{who}: **{c['verdict']}**. "
                       f"{c['detail']}.")
        out.append("")
    return "\n".join(out)
