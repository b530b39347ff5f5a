"""The text summary of a real-guest run, from its RUN record (``shmalloc vm``
prints it; ``shmalloc report`` prints saved ones the same way).  Functions
return lines; the caller prints."""

from __future__ import annotations

from ..units import fmt_bytes


def _s(x, fmt=".2f", unit=" s") -> str:
    return "-" if x is None else f"{x:{fmt}}{unit}"


def _b(x) -> str:
    return "-" if x is None else fmt_bytes(x)


def headline(run: dict) -> str:
    c, q, g = run["config"], run["qemu"], run["guest"]
    return (f"shmalloc vm: {c['workload']}, {c['workers']} worker"
            f"{'s' if c['workers'] != 1 else ''}, {fmt_bytes(c['memory'])} guest, "
            f"{c['vcpus']} vCPU{'s' if c['vcpus'] != 1 else ''}, Linux {g['kernel_release']} "
            f"under QEMU ({q['accel'].upper()}), report order "
            f"{g['report_order_effective']}, seed {c['seed']}")


def format_run(run: dict) -> list[str]:
    c, g, q, m, f = run["config"], run["guest"], run["qemu"], run["memory"], run["figures"]
    st = g["start_state"]
    lines = [headline(run), ""]
    lines += ["system",
              f"  QEMU                 {q['qemu']}  ({q['accel_chosen_by']})",
              f"  guest kernel         {g['kernel_release']} ({q.get('kernel_package') or '?'})"
              f", THP {g['thp_enabled']}, guest workload THP {c['guest_thp']}",
              f"  guest allocator      min_free_kbytes {_b(g.get('min_free_bytes'))}, per-cpu "
              f"lists' high mark {_b(g.get('pcp_high_bytes'))} (summed over zones and cpus)",
              "  start state          "
              + (f"reporter idle after {st['waited_s']:.1f} s and {st['passes_before_start']} "
                 f"passes since boot" if st["idle"] else
                 f"{st['start']}: {st['passes_before_start']} passes since boot, reporter "
                 "not known idle")
              + f"; Reported {_b(st['reported_bytes'])} of {_b(st['free_bytes'])} free"]
    rep = run["reporting"]
    durations = [p["duration_s"] for p in rep["passes"]]
    lines += ["", "reporting (the guest kernel's page_reporting, timed by kprobes)",
              f"  passes {rep['passes_count']}, reports {rep['reports']}, reported "
              f"{_b(rep['reported_bytes'])}; pass duration median "
              f"{_s(f.get('pass_duration_s_median'), '.4f')}, max "
              f"{_s(max(durations, default=None), '.4f')} (guest clock)"]
    lines += ["", "memory",
              f"  guest                {fmt_bytes(m['guest_bytes'])}",
              f"  host-resident        start {_b(m['host_resident_bytes_start'])}, "
              f"end {_b(m['host_resident_bytes_end'])}, min {_b(m['host_resident_bytes_min'])}, "
              f"max {_b(m['host_resident_bytes_max'])} (the guest-RAM mapping's Rss)",
              f"  transparent huge     {_pct(m.get('anon_huge_share_at_max'))} of it at its "
              "largest (AnonHugePages)",
              f"  footprint            {m['footprint_gib_s']:.3f} GiB*s",
              f"  guest free at end    {_b(m['free_bytes_end'])} (MemFree), of which in blocks "
              f"below order {c['report_order']}: {_b(m['free_unreportable_bytes_end'])}; "
              f"on the per-cpu lists besides: {_b(_last(m['timeline'].get('pcp_bytes')))}"]
    capped = [e for e in run["events"] if e["event"] == "capped"]
    if capped:
        lines.append(f"  hog                  asked {_b(sum(e['bytes'] for e in capped))}, stopped "
                     "short of MemAvailable less 32 MiB (the OOM killer's line)")
    if m.get("freed_at_s") is not None:
        lines.append(f"  workers freed        {_b(m['released_bytes'])} at "
                     f"{m['freed_at_s']:.2f} s; half of it back on the host "
                     + (f"{m['half_returned_s']:.2f} s later" if m["half_returned_s"] is not None
                        else "never"))
        lines.append(f"  after the free       {len(f.get('steps', []))} steps of host-resident "
                     f"memory, median {_b(f.get('step_bytes'))}, every "
                     f"{_s(f.get('step_interval_s'))}; the first "
                     f"{_s(f.get('first_step_s'))} after the free")
        if f.get("pass_returned_bytes_median") is not None:
            lines.append(f"  per pass             reported "
                         f"{_b(f.get('pass_reported_bytes_median'))}, host got back "
                         f"{_b(f.get('pass_returned_bytes_median'))} (medians), every "
                         f"{_s(f.get('pass_interval_s_median'))}")
    hf = run["host_faults"]
    lines += ["", "host page faults (QEMU: its own and TCG's too)",
              f"  minor {hf['minflt']}, major {hf['majflt']} during the workload"
              + (f"; {f['host_faults']} after the free, when "
                 f"{_b(f['refaulted_bytes'])} of guest memory became resident again"
                 if f.get("host_faults") is not None else "")]
    t = run["timing"]
    lines += ["", "time",
              f"  build {t['build_s']:.1f} s, accelerator {t.get('accel_s', 0):.1f} s, boot "
              f"{t.get('boot_s', 0):.1f} s, start state "
              f"{t.get('settle_s', 0):.1f} s, workload {t.get('measured_s', 0):.1f} s, "
              f"total {t['total_s']:.1f} s",
              "", "safety",
              f"  use-after-discard    {run['safety']['use_after_discard']}",
              f"  foreign canaries     {run['safety']['double_allocations']}"]
    return lines


def _last(values):
    return values[-1] if values else None


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f} %"
