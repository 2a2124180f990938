"""Summaries per row, the speed targets, the table and the JSON document."""

from __future__ import annotations

from .rows import GROUP_PLAIN, PLAIN, SINGLE, Row
from .timing import median_and_spread

# The speed targets the bench checks: (what it compares, the least ratio that passes).
TARGETS = {
    "mtp_vs_mlx_plain": ("best exo-spec mtp row / mlx-lm plain", 1.8),
    "drafter_vs_mlx_speculative": ("best exo-spec drafter row / best mlx-lm speculative row",
                                   1.15),
    "untrained_auto_vs_plain": ("exo-spec untrained drafter (auto) / mlx-lm plain", 0.95),
    "group_speculative_vs_group_plain": ("best group speculative row / group plain", 1.5),
}


def first_divergence(tokens: list[int], reference: list[int], eos: set[int] | None = None
                     ) -> int | None:
    """The first position where ``tokens`` and ``reference`` differ (where the shorter
    one ends, if it is the other's start), None where they agree. ``eos``: ``tokens``
    stopped at end of sequence, so they agree with a reference that has an EOS token
    right after them (the reference runs on past it)."""
    at = next((i for i, (a, b) in enumerate(zip(tokens, reference, strict=False)) if a != b), None)
    if at is not None:
        return at
    if len(tokens) == len(reference) or (
            eos is not None and len(tokens) < len(reference) and reference[len(tokens)] in eos):
        return None
    return min(len(tokens), len(reference))


def divergences(row: Row, reference: list[list[int]], eos: set[int]) -> list[int | None]:
    """Per prompt of the row, the earliest ``first_divergence`` over its repeats from the
    reference (mlx-lm plain, first repeat); a group run stops at EOS."""
    out = []
    for n, i in enumerate(row.prompts):
        found = [first_divergence(run.prompts[n].tokens, reference[i],
                                  None if row.group == SINGLE else eos) for run in row.runs]
        found = [at for at in found if at is not None]
        out.append(min(found) if found else None)
    return out


def summarize(rows: list[Row], eos: set[int]) -> list[dict]:
    by_name = {(r.group, r.name, r.k): r for r in rows}
    base = by_name.get((SINGLE, PLAIN, "-"))
    reference = [p.tokens for p in base.runs[0].prompts] if base and base.runs else []
    medians = {id(r): median_and_spread([run.tps for run in r.runs])[0] for r in rows}
    out = []
    for r in rows:
        median, spread = median_and_spread([run.tps for run in r.runs])
        last = r.runs[-1] if r.runs else None
        group_base = next((g for g in rows if g.group == r.group and g.name == GROUP_PLAIN),
                          None)
        diverged = divergences(r, reference, eos) if r.runs and reference else None
        d = {
            "group": r.group, "row": r.name, "k": r.k,
            "decode_tps": round(median, 2), "spread_pct": round(spread, 1),
            "tps_per_repeat": [round(run.tps, 2) for run in r.runs],
            "acceptance": None if not last or last.acceptance is None
            else round(last.acceptance, 3),
            "tokens_per_round": round(last.tokens_per_round, 3) if last else None,
            "tokens": last.decoded if last else 0,
            "prompts": len(r.prompts),
            "vs_mlx_plain": _ratio(median, medians.get(id(base))),
            "same_output": None if diverged is None else all(at is None for at in diverged),
            "first_divergence": diverged,
            "error": r.error,
        }
        if r.group != SINGLE:
            d["vs_group_plain"] = _ratio(median, medians.get(id(group_base)))
            d["finish"] = [p.finish for p in last.prompts] if last else []
        d.update(last.prompts[-1].extra if last and last.prompts else {})
        out.append(d)
    return out


def _ratio(a: float, b: float | None) -> float | None:
    return round(a / b, 3) if b and a else None


def checks(results: list[dict]) -> dict:
    def best(pred) -> dict | None:
        rows = [r for r in results if pred(r) and r["decode_tps"] and not r["error"]]
        return max(rows, key=lambda r: r["decode_tps"]) if rows else None

    def single(name):
        return lambda r: r["group"] == SINGLE and r["row"] == name

    plain = best(single(PLAIN))
    pairs = {
        "mtp_vs_mlx_plain": (best(single("exo-spec mtp")), plain),
        "drafter_vs_mlx_speculative": (best(single("exo-spec drafter")),
                                       best(single("mlx-lm speculative"))),
        "untrained_auto_vs_plain": (best(single("exo-spec untrained drafter")), plain),
        "group_speculative_vs_group_plain": (
            best(lambda r: r["group"] != SINGLE and r["row"] != GROUP_PLAIN),
            best(lambda r: r["group"] != SINGLE and r["row"] == GROUP_PLAIN)),
    }
    out = {}
    for key, (what, least) in TARGETS.items():
        num, den = pairs[key]
        if not num or not den:
            out[key] = {"what": what, "target": least, "ratio": None, "met": None,
                        "note": "not measured (rows missing or failed)"}
            continue
        ratio = round(num["decode_tps"] / den["decode_tps"], 3)
        out[key] = {"what": what, "target": least, "ratio": ratio, "met": ratio >= least,
                    "rows": [f"{num['row']} k={num['k']}", f"{den['row']} k={den['k']}"]}
    same_k = _same_k(results)
    if same_k and out["drafter_vs_mlx_speculative"]["ratio"] is not None:
        # The best rows may differ in k (adaptive wins by not drafting when drafts miss);
        # at equal fixed k the ratio is the cost of a round, exo-spec's against mlx-lm's.
        out["drafter_vs_mlx_speculative"]["same_k"] = same_k
    return out


def _same_k(results: list[dict]) -> dict[str, float]:
    def tps(name):
        return {r["k"]: r["decode_tps"] for r in results if r["group"] == SINGLE
                and r["row"] == name and not r["error"] and r["decode_tps"]}

    exo, mlx = tps("exo-spec drafter"), tps("mlx-lm speculative")
    return {k: round(exo[k] / mlx[k], 3) for k in exo if k in mlx}


def table(results: list[dict]) -> str:
    lines = []
    for group in dict.fromkeys(r["group"] for r in results):
        rows = [r for r in results if r["group"] == group]
        extra = group != SINGLE
        header = (f"{'row':<28} {'k':>4} {'tok/s':>9} {'spread':>7} {'accept':>7} "
                  f"{'tok/rnd':>7} {'vs mlx':>7}"
                  + (f" {'vs grp':>7} {'B/round':>8}" if extra else "")
                  + "  output")
        lines += ["", f"[{group}]", header, "-" * len(header)]
        for r in rows:
            if r["error"]:
                lines.append(f"{r['row']:<28} {r['k']:>4}  n/a: {r['error']}")
                continue
            accept = "-" if r["acceptance"] is None else f"{100 * r['acceptance']:.0f}%"
            same = {True: "same", False: "DIFFERS", None: "?"}[r["same_output"]]
            if r["same_output"] is False:
                same += " from token " + ",".join(
                    "-" if at is None else str(at) for at in r["first_divergence"])
            line = (f"{r['row']:<28} {r['k']:>4} {r['decode_tps']:>9.1f} "
                    f"{r['spread_pct']:>6.1f}% {accept:>7} {r['tokens_per_round']:>7.2f} "
                    f"{_fmt(r['vs_mlx_plain']):>7}")
            if extra:
                sent = r.get("bytes_per_round")
                line += (f" {_fmt(r.get('vs_group_plain')):>7} "
                         f"{'-' if sent is None else f'{sent:.0f}':>8}")
            lines.append(line + f"  {same}")
    return "\n".join(lines)


def checks_text(result: dict) -> str:
    lines = ["", "targets:"]
    for key, c in result.items():
        if c["ratio"] is None:
            lines.append(f"  {key:<34} {'-':>7}  (>= {c['target']})  {c['note']}")
        else:
            verdict = "met" if c["met"] else "MISSED"
            lines.append(f"  {key:<34} {c['ratio']:>7.3f}x (>= {c['target']})  {verdict}: "
                         f"{c['rows'][0]} / {c['rows'][1]}")
            if c.get("same_k"):
                lines.append("  " + " " * 34 + " at equal k: " + ", ".join(
                    f"k={k} {v:.3f}x" for k, v in c["same_k"].items()))
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"
