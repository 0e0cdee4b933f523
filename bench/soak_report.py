#!/usr/bin/env python3
"""Turns the raw results of bench/soak.sh into a Markdown section (on stdout).

usage: soak_report.py META_JSON RESULTS_JSONL

Each line of RESULTS_JSONL is one run: {"kind": "hold"|"churn", "path", "n", "soak": <the
generator's JSON report>, "ledger_rows", "warnings", "bg_cores", "machine_busy_ticks"}.
"""
import json
import sys

PATH_NAMES = {
    "direct": "direct (upstream-sim)",
    "bareproxy": "bareproxy",
    "bourse": "bourse",
    "bourse-nousage": "bourse, upstream without usage",
}


def fmt(x, digits=2):
    return "–" if x is None else f"{x:,.{digits}f}"


def pair(a, b, digits=2):
    return f"{fmt(a, digits)} / {fmt(b, digits)}"


def sub(a, b):
    return None if a is None or b is None else a - b


def signed(x, digits=2):
    return "–" if x is None else f"{x:+,.{digits}f}"


def errors_text(e):
    parts = [f"{k.replace('_', ' ')} {e[k]}" for k in ("connect", "broken_head", "broken_body", "timeout", "no_done") if e[k]]
    parts += [f"HTTP {s} ×{n}" for s, n in e["status"].items()]
    text = ", ".join(parts) or "0"
    if e.get("first_connect_error"):
        text += f" (first connect error: {e['first_connect_error']})"
    return text


def mb(kb):
    return None if kb is None else kb / 1024


def proc_of(r):
    """The process under test: the proxy, or for direct the sim (watched as "proxy" too)."""
    return r["soak"]["proc"].get("proxy", {})


def main():
    meta = json.load(open(sys.argv[1]))
    runs = [json.loads(line) for line in open(sys.argv[2]) if line.strip()]
    hold = [r for r in runs if r["kind"] == "hold"]
    churn = [r for r in runs if r["kind"] == "churn"]
    tck = meta["clk_tck"]
    direct = {r["n"]: r["soak"] for r in hold if r["path"] == "direct"}

    out = []
    w = out.append
    title = "## Open-stream soak"
    if meta["label"]:
        title += f" — {meta['label']}"
    w(title)
    w("")
    w(f"Run {meta['date']} by `bench/soak.sh` on {meta['nproc']} cores ({meta['cpu_model']}), Linux {meta['kernel']}, "
      f"commit `{meta['commit']}`; load average at the start {meta['loadavg_start']}.")
    if meta["nofile"] != "unlimited" and int(meta["nofile"]) < meta["nofile_needed"]:
        w(f"**Warning**: `ulimit -n` was {meta['nofile']} (could not be raised); a proxy holding "
          f"{max(int(n) for n in meta['streams']):,} streams needs about {meta['nofile_needed']:,} descriptors, "
          "so the largest proxied runs can fail for that reason alone.")
    if not meta["default_bourse_bin"]:
        w(f"Gateway binary: `{meta['bourse_bin']}`.")
    if meta["extra_bourse_config"]:
        w(f"Extra bourse config: `{meta['extra_bourse_config']!r}`.")
    w("")
    w(f"Each hold run starts a fresh upstream-sim (`stamp_chunks`, one chunk every {meta['interval_ms']} ms, "
      f"{meta['output_tokens']} tokens: {meta['tokens_per_sec']} tokens/s for ~{meta['seconds']} s, "
      f"{meta['sim_threads']} worker thread(s)) and a fresh proxy, then `soak hold` opens the streams over "
      f"~{meta['ramp_seconds']} s (at least {meta['min_ramp_rate']}/s) on one connection each and holds them to "
      f"`[DONE]` (deadline {meta['deadline']} s; generator: {meta['gen_threads']} thread(s); `ulimit -n` {meta['nofile']}). "
      "Requests ask for the usage chunk (`stream_options.include_usage`); \"upstream without usage\" is the same "
      "gateway in front of a sim with `usage_style: omitted`, so it estimates usage.")
    w("")
    w("- **transit**: a token's arrival at the client minus the sim's `sim_sent_us` stamp (same clock): the time "
      "the path adds to every token, plus the generator's own read delay. **added** is the path's percentile minus "
      "direct's at the same stream count (the direct run has the same sim, generator and load shape).")
    w("- **gap − interval**: time between consecutive tokens of a stream minus the sim's pacing interval. The sim "
      "sleeps the interval *after* each write (tokio timers round up to the next millisecond), so direct shows a "
      "positive baseline of about a millisecond; what a path adds is its excess over direct.")
    w("- **RSS per open stream**: (RSS at the plateau − RSS before the load) / streams open at the plateau; the "
      "plateau is the median of the 0.5 s samples taken while ≥ 99% of the most streams seen were open. "
      "**CPU per token**: the process's CPU time over the run / tokens the client received.")
    w("")

    if hold:
        w("### Streams and latency")
        w("")
        w("| streams | path | completed / started | errors | cost comments | TTFT p50 / p99 ms | transit p50 / p99 ms | "
          "added transit p50 / p99 ms | gap − interval p50 / p99 ms | added gap p99 ms | tokens/s at plateau / offered |")
        w("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in hold:
            s, d = r["soak"], direct.get(r["n"])
            t, g = s["transit_ms"], s["gap_minus_interval_ms"]
            if d and r["path"] != "direct":
                added = f"{signed(sub(t['p50'], d['transit_ms']['p50']))} / {signed(sub(t['p99'], d['transit_ms']['p99']))}"
                added_gap = signed(sub(g["p99"], d["gap_minus_interval_ms"]["p99"]))
            else:
                added, added_gap = "–", "–"
            w(f"| {r['n']:,} | {PATH_NAMES.get(r['path'], r['path'])} | {s['completed']:,} / {s['started']:,} | "
              f"{errors_text(s['errors'])} | {s['cost_comments']:,} | {pair(s['ttft_ms']['p50'], s['ttft_ms']['p99'])} | "
              f"{pair(t['p50'], t['p99'])} | {added} | {signed(g['p50'])} / {signed(g['p99'])} | {added_gap} | "
              f"{fmt(s['plateau_events_per_s'], 0)} / {r['n'] * 1000 / meta['interval_ms']:,.0f} |")
        w("")
        w("\"At plateau\": tokens received per second while ≥ 99% of the streams were open; \"offered\": streams × "
          "one token per interval. A path that receives much less than offered is saturated (often the machine: "
          "see the last table), and its latencies measure queueing.")
        w("")
        w("### The process under test (direct: upstream-sim itself)")
        w("")
        w("| streams | path | RSS before MB | RSS at plateau MB | RSS per open stream KB | peak RSS (VmHWM) MB | "
          "CPU s | CPU per token µs | max threads | ledger rows / started |")
        w("|---|---|---|---|---|---|---|---|---|---|")
        for r in hold:
            s, p = r["soak"], proc_of(r)
            before, plateau, open_ = p.get("rss_before_kb"), p.get("rss_plateau_kb"), p.get("plateau_open")
            per = (plateau - before) / open_ if plateau is not None and before is not None and open_ else None
            cpu_tok = p["cpu_s"] * 1e6 / s["tokens"] if s["tokens"] and "cpu_s" in p else None
            ledger = "–"
            if r["ledger_rows"] is not None:
                ok = "" if r["ledger_rows"] == s["started"] else " **≠**"
                ledger = f"{r['ledger_rows']:,} / {s['started']:,}{ok}"
            w(f"| {r['n']:,} | {PATH_NAMES.get(r['path'], r['path'])} | {fmt(mb(before), 1)} | {fmt(mb(plateau), 1)} | "
              f"{fmt(per, 1)} | {fmt(mb(p.get('hwm_kb')), 1)} | {fmt(p.get('cpu_s'))} | {fmt(cpu_tok, 2)} | "
              f"{p.get('threads_max', '–')} | {ledger} |")
        w("")
        w("### Machine during each hold run")
        w("")
        w("Average cores over the run. \"Others\" is machine-wide busy CPU minus the generator, the sim and the "
          "proxy: builds or tests sharing the machine (\"before\": measured for 0.5 s just before the run).")
        w("")
        w("| streams | path | wall s | generator | sim | proxy | others | others before |")
        w("|---|---|---|---|---|---|---|---|")
        for r in hold:
            w("| " + " | ".join(machine_row(r, tck)) + " |")
        w("")

    if churn:
        w(f"### Churn: {meta['churn_workers']} workers, {meta['churn_seconds']} s, "
          f"{meta['churn_tokens']}-token unpaced streams without usage")
        w("")
        w("Keep-alive connections, requests back to back; the sim omits usage (`usage_style: omitted`) and the "
          "client does not ask for it. **cost comments**: streams that ended with `: x-bourse-cost-usd=...` after `[DONE]`.")
        w("")
        w("| path | completed / started | streams/s | errors | cost comments | TTFT p50 / p99 ms | "
          "peak RSS (VmHWM) MB | max threads | CPU per stream µs | ledger rows / started | generator / sim / others cores |")
        w("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in churn:
            s, p = r["soak"], proc_of(r)
            ledger = "–"
            if r["ledger_rows"] is not None:
                ok = "" if r["ledger_rows"] == s["started"] else " **≠**"
                ledger = f"{r['ledger_rows']:,} / {s['started']:,}{ok}"
            cpu_stream = p["cpu_s"] * 1e6 / s["completed"] if s["completed"] and "cpu_s" in p else None
            m = machine_row(r, tck)
            w(f"| {PATH_NAMES.get(r['path'], r['path'])} | {s['completed']:,} / {s['started']:,} | "
              f"{s['completed'] / s['wall_s']:,.0f} | {errors_text(s['errors'])} | {s['cost_comments']:,} | "
              f"{pair(s['ttft_ms']['p50'], s['ttft_ms']['p99'])} | {fmt(mb(p.get('hwm_kb')), 1)} | "
              f"{p.get('threads_max', '–')} | {fmt(cpu_stream, 1)} | {ledger} | {m[3]} / {m[4]} / {m[6]} |")
        w("")

    warned = [r for r in runs if r.get("warnings")]
    for r in warned:
        w(f"- {r['kind']} {r['path']} {r['n']}: bourse logged {r['warnings']} warnings/errors; first: "
          f"`{r['first_warning']}`")
    if warned:
        w("")
    print("\n".join(out))


def machine_row(r, tck):
    s = r["soak"]
    procs = s["proc"]
    wall = max(s["wall_s"], 1e-9)
    gen = procs.get("soak", {}).get("cpu_s", 0.0)
    sim = procs.get("sim", procs.get("proxy", {})).get("cpu_s", 0.0)
    proxy = procs.get("proxy", {}).get("cpu_s", 0.0) if r["path"] != "direct" else 0.0
    others = max(0.0, r["machine_busy_ticks"] / tck - gen - sim - proxy) / wall
    return [
        f"{r['n']:,}",
        PATH_NAMES.get(r["path"], r["path"]),
        fmt(s["wall_s"], 1),
        fmt(gen / wall),
        fmt(sim / wall),
        fmt(proxy / wall) if r["path"] != "direct" else "–",
        fmt(others),
        fmt(r["bg_cores"]),
    ]


if __name__ == "__main__":
    main()
