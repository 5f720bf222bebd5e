"""Where ``auto`` left time on the table: a bench run's rows, auto against every forced algorithm.

    python benchmarks/auto_gaps.py RESULTS.json [MORE.json ...] [--peer torch] [--margin 0.05]

A run of ``gpuconv.bench --algorithms auto,A,B,...`` times auto (contender ``gpuconv``, its
concrete choice in the row's ``algorithm``) beside each forced algorithm (``gpuconv:A``). This
prints, per row, auto's choice and median, the fastest forced algorithm and its median, auto's
time over that (above 1 + margin: a gap, marked ``<<``, or ``~`` where auto chose that algorithm
itself: auto's own cost per call, or noise), and the peer's median; then per dtype
the peer geomean auto reached and the one it would reach taking the fastest forced algorithm of
each row, and how often each algorithm was the fastest. The files may be bench JSON (a list of
rows, or an object with ``rows``) or a record of benchmarks/results/ (its ``bench``).

The GPU sessions set auto's CUDA rules (algorithms._cuda_auto) from such rows: a device call
returns only its last 12,000 characters, so gpu_owed.py prints this table after each bench
phase, and the rows that need a rule change are the marked ones. The bench times each contender
in its own loop, so two names for the same kernel (auto and the algorithm it chose) differ by
the run's noise: the margin keeps those out.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from gpuconv.bench import geomean

FORCED = "gpuconv:"


def load_rows(path: Path) -> List[Dict[str, Any]]:
    """The bench rows in a bench JSON file or a results record."""
    data = json.loads(Path(path).read_text())
    if isinstance(data, dict):
        data = data.get("rows", data.get("bench", []))
    if not isinstance(data, list):
        raise ValueError(f"{path}: no bench rows (a list, or an object with 'rows' or 'bench')")
    return [r for r in data if isinstance(r, dict) and "contenders" in r]


def _ms(contender: Optional[Dict[str, Any]]) -> Optional[float]:
    return None if not contender else contender.get("median_ms")


def gaps(rows: Sequence[Dict[str, Any]], peer: str = "torch") -> List[Dict[str, Any]]:
    """Per row: auto's choice and time, the fastest forced algorithm and its time, the peer's."""
    out = []
    for r in rows:
        c = r["contenders"]
        forced: Dict[str, float] = {}
        for name, contender in c.items():
            ms = _ms(contender)
            if name.startswith(FORCED) and ms:
                forced[name[len(FORCED):]] = ms
        best = min(forced, key=forced.__getitem__) if forced else None
        out.append({"layer": r["layer"], "op": r.get("op", "forward"), "dtype": r["dtype"],
                    "depthwise": bool(r.get("depthwise")), "auto": r.get("algorithm"),
                    "auto_ms": _ms(c.get("gpuconv")), "best": best,
                    "best_ms": forced.get(best) if best else None,
                    "peer_ms": _ms(c.get(peer))})
    return out


def summary(found: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Per dtype (dense and depthwise apart): the peer's time over auto's and over the fastest
    algorithm's, geomeans over the rows that have both, and how often each algorithm won."""
    out: Dict[str, Dict[str, Any]] = {}
    for g in found:
        key = f"{g['dtype']} {'depthwise' if g['depthwise'] else 'dense'}"
        if g["op"] != "forward":
            key = f"{g['op']} {key}"
        s = out.setdefault(key, {"auto": [], "best": [], "wins": Counter()})
        if g["auto_ms"] and g["peer_ms"]:
            s["auto"].append(g["peer_ms"] / g["auto_ms"])
            fastest = min(x for x in (g["auto_ms"], g["best_ms"]) if x)
            s["best"].append(g["peer_ms"] / fastest)
        if g["best"]:
            s["wins"][g["best"]] += 1
    return {k: {"vs_peer_auto": geomean(v["auto"]), "vs_peer_best": geomean(v["best"]),
                "rows": len(v["auto"]), "fastest": dict(v["wins"].most_common())}
            for k, v in out.items()}


def _family(algorithm: Optional[str]) -> Optional[str]:
    """The algorithm a row's concrete choice belongs to: auto names the tiles of some (e.g.
    ``gemm_128x64`` for ``gemm``)."""
    return None if algorithm is None else re.sub(r"_\d+x\d+$", "", algorithm)


def report(found: Sequence[Dict[str, Any]], peer: str = "torch", margin: float = 0.05) -> str:
    """The table and the per-dtype summary as text."""
    def ms(v: Optional[float]) -> str:
        return f"{v:8.3f}" if v else f"{'-':>8}"

    head = (f"{'layer':<26} {'dtype':<9} {'auto':<14} {'ms':>8} {'fastest forced':<14} "
            f"{'ms':>8} {'auto/f':>6} {peer + ' ms':>9}")
    lines = [head, "-" * len(head)]
    for g in found:
        name = g["layer"] if g["op"] == "forward" else f"{g['layer']} {g['op']}"
        ratio = g["auto_ms"] / g["best_ms"] if g["auto_ms"] and g["best_ms"] else None
        mark = ""
        if ratio and ratio > 1 + margin:
            mark = " ~" if _family(g["auto"]) == g["best"] else " <<"
        lines.append(f"{name[:26]:<26} {g['dtype']:<9} {str(g['auto'])[:14]:<14} "
                     f"{ms(g['auto_ms'])} {str(g['best'] or '-')[:14]:<14} {ms(g['best_ms'])} "
                     f"{(f'{ratio:6.2f}' if ratio else '     -')} {ms(g['peer_ms']):>9}{mark}")
    for key, s in summary(found).items():
        auto, best = s["vs_peer_auto"], s["vs_peer_best"]
        if auto is None:
            continue
        lines.append(f"{key}: {peer}/auto geomean {auto:.3f}, with the fastest algorithm of "
                     f"each row {best:.3f} ({s['rows']} rows); fastest: "
                     + ", ".join(f"{a} {n}" for a, n in s["fastest"].items()))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", help="bench JSON files or results records")
    ap.add_argument("--peer", default="torch", help="the peer contender (default: torch)")
    ap.add_argument("--margin", type=float, default=0.05,
                    help="mark rows where auto is slower than the fastest by more than this")
    args = ap.parse_args(argv)
    rows: List[Dict[str, Any]] = []
    for f in args.files:
        try:
            rows += load_rows(Path(f))
        except (OSError, ValueError) as e:  # json.JSONDecodeError is a ValueError
            print(f"auto_gaps.py: {f}: {e}", file=sys.stderr)
    if not rows:
        print("auto_gaps.py: no rows", file=sys.stderr)
        return 1
    print(report(gaps(rows, args.peer), args.peer, args.margin))
    return 0


if __name__ == "__main__":
    sys.exit(main())
