#!/usr/bin/env python3
"""Turns the raw results of bench/run.sh into bench/RESULTS.md (Markdown on stdout).

usage: report.py META_JSON RESULTS_JSONL

Every path in the results gets a column; every path whose name starts with "bourse"
is compared with bareproxy and checked against the targets; the limited paths
(bourse-limits, bourse-redis) are also compared with the unlimited bourse.
"""
import json
import os
import sys

# Targets (bourse vs the bareproxy floor, same run).
MIN_RPS_FRACTION_64 = 0.85  # of bareproxy req/s at 64 connections
MAX_ADDED_P50_MS_1 = 0.05  # p50 at 1 connection, over bareproxy's
MAX_CPU_RATIO = 2.0  # CPU per request, over bareproxy's (at 64 connections)
MAX_RSS_MB = 50.0  # peak RSS (VmHWM), MiB
MAX_ADDED_TTFB_MS = 0.2  # streaming median time to first byte, over bareproxy's
MIN_METRICS_ON_FRACTION = 0.95  # bourse (metrics on) req/s over bourse-nometrics', 64 connections
FLOOR = "bareproxy"
# Limited paths (every request under a virtual key with a budget and rate limits) vs the
# same run's unlimited `bourse`, req/s at 64 connections: name -> (where the counters live, target).
LIMITED = {
    "bourse-limits": ("in process", 0.90),
    "bourse-redis": ("in Redis", 0.75),
}


def wrk_metrics(r, tck):
    """Derived numbers of one wrk cell (a "wrk" row of the raw results)."""
    w = r["wrk"]
    cpu_s = r["cpu_ticks"] / tck
    sim_s = r["sim_cpu_ticks"] / tck
    # A process serving this path only (bourse-redis's redis-server).
    helper_s = r.get("helper_cpu_ticks", 0) / tck
    ours = cpu_s + helper_s + (sim_s if r["path"] != "direct" else 0) + r["wrk_cpu_s"]
    return {
        "rps": w["requests"] / (w["duration_us"] / 1e6),
        "p50": w["p50_us"] / 1000,
        "p99": w["p99_us"] / 1000,
        "requests": w["requests"],
        "errors": sum(v for k, v in w.items() if k.startswith("errors_")),
        "cpu_ms_per_req": cpu_s * 1000 / w["requests"] if w["requests"] else float("nan"),
        "cores": cpu_s / r["wall_s"],
        "sim_cores": sim_s / r["wall_s"],
        "helper_cores": helper_s / r["wall_s"],
        "helper_ms_per_req": helper_s * 1000 / w["requests"] if w["requests"] else float("nan"),
        "wrk_cores": r["wrk_cpu_s"] / r["wall_s"],
        # Machine-wide busy CPU minus the server under test (and its redis-server), the sim and wrk: builds,
        # tests, anything else sharing the machine during this cell.
        "other_cores": max(0.0, r["machine_busy_ticks"] / tck - ours) / r["wall_s"],
    }


def main():
    meta = json.load(open(sys.argv[1]))
    rows = [json.loads(line) for line in open(sys.argv[2]) if line.strip()]
    paths = meta["paths"]
    bourses = [p for p in paths if p.startswith("bourse")]
    tck = meta["clk_tck"]

    # Each cell may have been measured in several rounds (paths interleaved, so a slow spell
    # of a shared machine hits every path alike); report the round with the median req/s.
    rounds = {}
    for r in rows:
        if r["kind"] == "wrk":
            rounds.setdefault((r["path"], r["conns"]), []).append(wrk_metrics(r, tck))
    wrk = {k: sorted(v, key=lambda m: m["rps"])[len(v) // 2] for k, v in rounds.items()}

    def paired(a, b, c, key="rps"):
        """Median over rounds of a's `key` over b's, pairing the measurements of the same
        round (measured minutes apart at most, paths interleaved), so a slow spell of the
        machine divides out instead of landing on one path's median and not the other's."""
        ra, rb = rounds.get((a, c)), rounds.get((b, c))
        if not ra or not rb:
            return None
        ratios = sorted(x[key] / y[key] for x, y in zip(ra, rb) if y[key])
        return ratios[len(ratios) // 2] if ratios else None
    ttfb = {r["path"]: r["ttfb"] for r in rows if r["kind"] == "ttfb"}
    rss = {r["path"]: r["vm_hwm_kb"] / 1024 for r in rows if r["kind"] == "rss"}
    conns = sorted({c for (_, c) in wrk})
    has_floor = FLOOR in paths

    out = []
    w = out.append
    title = "# Bourse load benchmark" + (f": {meta['label']}" if meta["label"] else "")
    w(title)
    w("")
    w("How to run: `bash bench/run.sh` (env: `BENCH_SECONDS`, `BENCH_ROUNDS`, `BENCH_CONNS`, `BENCH_TTFB_N`, "
      "`BENCH_LABEL`, `BENCH_EXTRA_BOURSE_CONFIG`, `BENCH_OUT`; see the script's header).")
    w("")
    w(f"- Date: {meta['date']}")
    w(f"- Machine: {meta['nproc']} cores ({meta['cpu_model']}), load average at start {meta['loadavg_start']}")
    w(f"- Commit: {meta['commit']}")
    if meta["label"]:
        w(f"- Label: {meta['label']}")
    for name, text in meta["bourse_configs"].items():
        lines = [l.strip() for l in text.splitlines() if l.strip()]
        w(f"- `{name}` config: `{' '.join(lines)}`")
    limited = [p for p in paths if p in LIMITED]
    if limited:
        w(f"- {', '.join(f'`{p}`' for p in limited)}: before the run the script creates, through the admin API, "
          f"the tenant `{meta.get('limits_tenant', '?')}` and the virtual key `{meta.get('limits_key', '?')}`; "
          "every request of these paths carries that key (`Authorization: Bearer`), so it is authenticated, "
          "reserved against the key's and the tenant's counters before the upstream call and settled after it"
          + (f"; `bourse-redis`'s counters are in a redis-server {meta.get('redis_version') or ''} of its own on "
             "127.0.0.1 (no persistence), whose CPU counts as that path's (not as \"other CPU\")"
             if "bourse-redis" in limited else "")
          + ". The other paths send no key (their gateways have none).")
    w(f"- Setup: everything on 127.0.0.1; upstream-sim with 1 worker thread (12 output tokens, no delays); "
      f"wrk {meta['wrk_version']}, 1 thread at 1 connection and 2 otherwise, "
      f"{meta['warmup_seconds']} s warm-up then {meta['seconds']} s measured per cell, "
      f"{meta.get('rounds', 1)} round(s) with the paths interleaved: req/s, latency and CPU are each "
      f"cell's median round, and every ratio between paths is the median of the per-round ratios "
      f"(paths of one round measured back to back), so a slow spell of the shared machine divides out; "
      f"non-streaming chat completion, keep-alive. Paths: "
      + ", ".join(f"`{p}`" for p in paths)
      + ("" if has_floor else " (bareproxy not found: no floor to compare with)")
      + ".")
    for r in rows:
        if r["kind"] == "log" and r["warnings"]:
            w(f"- `{r['path']}` logged {r['warnings']} warnings/errors during the run; first: `{r['first']}`")
    w(f"- Shared machine: before each measurement the script waits (up to {meta['quiet_wait']} s) until other "
      f"processes use < {meta['quiet_cores']} cores. \"Other CPU\" below = machine-wide busy CPU during the "
      "cell minus the server under test, upstream-sim and wrk. Kernel threads moving the benchmark's own "
      "loopback traffic (ksoftirqd, kworkers) land there too, so up to about 0.3 is normal; more means another "
      "workload shared the CPUs and the cell is noisy. Cells above "
      f"{meta.get('max_other_cores', '?')} are measured again (up to {meta.get('retries', 0)} times; the last "
      "attempt is kept).")
    w("")

    # ---------------------------------------------------------------- throughput/latency
    w("## Non-streaming throughput and latency")
    w("")
    w("Latency percentiles are wrk's, which adds coordinated-omission correction samples for stalls, "
      "so p99 on a shared 2-core machine is pessimistic and noisy; p50 is robust. At 1 connection the "
      "latency includes waking idle vCPUs, so it is lower when the machine is busy than when it is quiet: "
      "compare paths within one run.")
    for c in conns:
        w("")
        w(f"### {c} connection{'s' if c != 1 else ''}")
        w("")
        w("| path | req/s | p50 (ms) | p99 (ms) | % of bareproxy req/s | errors | other CPU (cores) |")
        w("|---|---:|---:|---:|---:|---:|---:|")
        for p in paths:
            m = wrk.get((p, c))
            if not m:
                continue
            frac = paired(p, FLOOR, c) if p != "direct" else None
            pct = f"{100 * frac:.1f}%" if frac is not None else "—"
            w(f"| {p} | {m['rps']:,.0f} | {m['p50']:.3f} | {m['p99']:.3f} | {pct} | {m['errors']} "
              f"| {m['other_cores']:.2f} |")
    if has_floor and (FLOOR, 1) in wrk:
        w("")
        for b in bourses:
            if (b, 1) in wrk:
                added = wrk[(b, 1)]["p50"] - wrk[(FLOOR, 1)]["p50"]
                w(f"{b} added p50 at 1 connection vs bareproxy: {added:+.3f} ms "
                  f"({wrk[(b, 1)]['p50']:.3f} vs {wrk[(FLOOR, 1)]['p50']:.3f}).")

    # ---------------------------------------------------------------- cpu/rss
    w("")
    w("## Proxy CPU per request and peak memory")
    w("")
    w("CPU = utime+stime delta from /proc/PID/stat over the measured run / requests completed; "
      "\"cores\" = that CPU time / wall time. Peak RSS = VmHWM at the end of the whole run.")
    w("")
    proxies = [p for p in paths if p != "direct"]
    head = "| proxy | " + " | ".join(f"CPU/req at {c} (ms) | cores at {c}" for c in conns) + " | peak RSS (MiB) |"
    w(head)
    w("|---|" + "---:|---:|" * len(conns) + "---:|")
    for p in proxies:
        cells = []
        for c in conns:
            m = wrk.get((p, c))
            cells.append(f"{m['cpu_ms_per_req']:.4f} | {m['cores']:.2f}" if m else "— | —")
        w(f"| {p} | " + " | ".join(cells) + f" | {rss.get(p, float('nan')):.1f} |")
        if any(m.get("helper_cores") for (q, _), m in wrk.items() if q == p):
            cells = []
            for c in conns:
                m = wrk.get((p, c))
                cells.append(f"{m['helper_ms_per_req']:.4f} | {m['helper_cores']:.2f}" if m else "— | —")
            w(f"| {p}: its redis-server | " + " | ".join(cells)
              + f" | {rss.get('redis-server', float('nan')):.1f} |")

    # ---------------------------------------------------------------- ttfb
    w("")
    w("## Streaming time to first byte")
    w("")
    n = meta["ttfb_n"]
    w(f"{n} sequential `\"stream\":true` requests per path on one keep-alive connection (bench/ttfb.py); "
      "time from writing the request to receiving the first body bytes holding `data:`.")
    w("")
    w("| path | median (ms) | p99 (ms) | added median vs bareproxy (ms) |")
    w("|---|---:|---:|---:|")
    for p in paths:
        t = ttfb.get(p)
        if not t:
            continue
        added = "—"
        if has_floor and FLOOR in ttfb and p not in ("direct", FLOOR):
            added = f"{t['median_ms'] - ttfb[FLOOR]['median_ms']:+.3f}"
        w(f"| {p} | {t['median_ms']:.3f} | {t['p99_ms']:.3f} | {added} |")

    # ---------------------------------------------------------------- targets
    w("")
    w("## Targets")
    w("")
    w("| path | target | result | |")
    w("|---|---|---|---|")

    def verdict(ok):
        return "met" if ok else "**not met**"

    for b in bourses:
        def row(target, text, ok):
            w(f"| {b} | {target} | {text} | {verdict(ok) if ok is not None else 'not measured'} |")

        f64, b64 = wrk.get((FLOOR, 64)), wrk.get((b, 64))
        if f64 and b64:
            frac = paired(b, FLOOR, 64)
            row("req/s at 64 conns ≥ 85% of bareproxy",
                f"{100 * frac:.1f}% ({b64['rps']:,.0f} vs {f64['rps']:,.0f})", frac >= MIN_RPS_FRACTION_64)
        else:
            row("req/s at 64 conns ≥ 85% of bareproxy", "—", None)
        f1, b1 = wrk.get((FLOOR, 1)), wrk.get((b, 1))
        if f1 and b1:
            added = b1["p50"] - f1["p50"]
            row("p50 at 1 conn ≤ bareproxy + 0.05 ms",
                f"{added:+.3f} ms ({b1['p50']:.3f} vs {f1['p50']:.3f})", added <= MAX_ADDED_P50_MS_1 + 1e-9)
        else:
            row("p50 at 1 conn ≤ bareproxy + 0.05 ms", "—", None)
        if f64 and b64:
            ratio = paired(b, FLOOR, 64, "cpu_ms_per_req")
            row("CPU/request ≤ 2× bareproxy (at 64 conns)",
                f"{ratio:.2f}× ({b64['cpu_ms_per_req']:.4f} vs {f64['cpu_ms_per_req']:.4f} ms)",
                ratio <= MAX_CPU_RATIO)
        else:
            row("CPU/request ≤ 2× bareproxy (at 64 conns)", "—", None)
        if b in rss:
            row("peak RSS ≤ 50 MiB", f"{rss[b]:.1f} MiB", rss[b] <= MAX_RSS_MB)
        else:
            row("peak RSS ≤ 50 MiB", "—", None)
        if b in ttfb and FLOOR in ttfb:
            added = ttfb[b]["median_ms"] - ttfb[FLOOR]["median_ms"]
            row("streaming median TTFB ≤ bareproxy + 0.2 ms",
                f"{added:+.3f} ms ({ttfb[b]['median_ms']:.3f} vs {ttfb[FLOOR]['median_ms']:.3f})",
                added <= MAX_ADDED_TTFB_MS)
        else:
            row("streaming median TTFB ≤ bareproxy + 0.2 ms", "—", None)

    # ------------------------------------------------------- variants of the gateway itself
    base, nol, auto = wrk.get(("bourse", 64)), wrk.get(("bourse-noledger", 64)), wrk.get(("bourse-auto", 64))
    nom = wrk.get(("bourse-nometrics", 64))
    if base and (nol or auto or nom):
        w("")
        w("## Ledger, routing and metrics cost (64 connections)")
        w("")
        w("| comparison | req/s | ratio | target | |")
        w("|---|---|---:|---|---|")
        if nol:
            frac = paired("bourse", "bourse-noledger", 64)
            w(f"| ledger on (`bourse`) vs off (`bourse-noledger`) | {base['rps']:,.0f} vs {nol['rps']:,.0f} | "
              f"{100 * frac:.1f}% | ≥ 90% | {verdict(frac >= 0.90)} |")
        if auto:
            frac = paired("bourse-auto", "bourse", 64)
            w(f"| routed (`model: auto`, `bourse-auto`) vs explicit model (`bourse`) | "
              f"{auto['rps']:,.0f} vs {base['rps']:,.0f} | {100 * frac:.1f}% | no measurable loss (≥ 95%) | "
              f"{verdict(frac >= 0.95)} |")
        if nom:
            frac = paired("bourse", "bourse-nometrics", 64)
            w(f"| metrics on (`bourse`) vs off (`bourse-nometrics`) | {base['rps']:,.0f} vs {nom['rps']:,.0f} | "
              f"{100 * frac:.1f}% | ≥ {100 * MIN_METRICS_ON_FRACTION:.0f}% | "
              f"{verdict(frac >= MIN_METRICS_ON_FRACTION)} |")

    # ------------------------------------------------- budgets and rate limits
    if base and any((p, 64) in wrk for p in LIMITED):
        w("")
        w("## Budget and rate-limit cost (vs `bourse`, no key)")
        w("")
        w("Each limited path's req/s over the unlimited `bourse`'s, the median of the per-round ratios; "
          "the target applies at 64 connections.")
        w("")
        w("| path | counters | "
          + " | ".join(f"at {c} conn{'s' if c != 1 else ''}" for c in conns if c != 64)
          + (" | " if any(c != 64 for c in conns) else "")
          + "req/s at 64 conns | ratio at 64 | target | |")
        w("|---|---|" + "---:|" * sum(1 for c in conns if c != 64) + "---|---:|---|---|")
        for p, (where, target) in LIMITED.items():
            m = wrk.get((p, 64))
            if not m:
                continue
            small = []
            for c in conns:
                if c == 64:
                    continue
                f = paired(p, "bourse", c)
                small.append(f"{100 * f:.1f}%" if f is not None else "—")
            frac = paired(p, "bourse", 64)
            w(f"| {p} | {where} | " + "".join(f"{x} | " for x in small)
              + f"{m['rps']:,.0f} vs {base['rps']:,.0f} | {100 * frac:.1f}% | ≥ {100 * target:.0f}% | "
              f"{verdict(frac >= target)} |")
        for p in LIMITED:
            rs = rounds.get((p, 64))
            bs = rounds.get(("bourse", 64))
            if rs and bs:
                w("")
                w(f"{p}/bourse per round at 64 connections: "
                  + ", ".join(f"{100 * x['rps'] / y['rps']:.1f}%" for x, y in zip(rs, bs) if y["rps"]) + ".")

    # ------------------------------------------------------------- response cache
    if any(("bourse-cache", c) in wrk for c in conns):
        w("")
        w("## Response cache (`bourse-cache`: every request a hit)")
        w("")
        w("A hit is answered from memory, with no upstream behind it: its latency is what the gateway "
          "itself adds (routing, the key's hash, the lookup, the ledger row). `bourse-auto` routes the "
          "same way and goes upstream; `direct` is the upstream answering on its own.")
        w("")
        w("| conns | hit p50 (ms) | hit p99 (ms) | hit req/s | `bourse-auto` p50 (ms) | `direct` p50 (ms) |")
        w("|---:|---:|---:|---:|---:|---:|")
        for c in conns:
            m = wrk.get(("bourse-cache", c))
            if not m:
                continue
            auto_p50 = wrk.get(("bourse-auto", c), {}).get("p50")
            direct_p50 = wrk.get(("direct", c), {}).get("p50")
            fmt = lambda v: f"{v:.3f}" if v is not None else "—"
            w(f"| {c} | {m['p50']:.3f} | {m['p99']:.3f} | {m['rps']:,.0f} | {fmt(auto_p50)} | {fmt(direct_p50)} |")

    # ------------------------------------------------------------- planner (criterion)
    cdir = meta.get("criterion_dir") or ""
    if cdir and os.path.isdir(cdir):
        w("")
        w("## Route planner (criterion, 100-model catalog)")
        w("")
        w("`cargo bench -p bourse --bench plan`: `Router::plan` over 100 priced models on 4 providers "
          "(policy, capability, context, quality and cost checks, ranking). Target: < 20 µs.")
        w("")
        w("| case | median (µs) | 95% CI (µs) | target |")
        w("|---|---:|---|---|")
        for case in sorted(os.listdir(cdir)):
            est = os.path.join(cdir, case, "new", "estimates.json")
            if not os.path.exists(est):
                continue
            m = json.load(open(est))["median"]
            lo, hi = m["confidence_interval"]["lower_bound"], m["confidence_interval"]["upper_bound"]
            med = m["point_estimate"] / 1000
            w(f"| {case} | {med:.2f} | {lo / 1000:.2f}–{hi / 1000:.2f} | {verdict(med < 20)} |")

    print("\n".join(out))


if __name__ == "__main__":
    main()
