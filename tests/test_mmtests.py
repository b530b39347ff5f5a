"""``--format mmtests``: mmtests' compare-kernels.sh layout, on a canned
input whose figures were worked out by hand (below each row's numbers)."""

from __future__ import annotations

from launcher.output.mmtests import Figure, format_mmtests, percent, summary

LABELS = ["none", "mainline", "bitmap"]
FIGURES = [
    # more is better; bitmap's interval excludes 1, mainline's holds it
    Figure("Mpages/s", True,
           {"none": [8, 10, 12, 10], "mainline": [9, 10, 11, 10], "bitmap": [1, 1, 1, 1]},
           {"mainline": False, "bitmap": True}),
    # less is better, and a baseline of 0: no percentage, no harmonic mean
    Figure("lockwait-ms", False,
           {"none": [0, 0, 0, 0], "mainline": [0.5] * 4, "bitmap": [0.25, 0.75, 0.25, 0.75]}),
]

# none:     Hmean 4 / (1/8 + 1/10 + 1/12 + 1/10) = 9.80; Stddev sqrt(8 / 3) = 1.63;
#           CoeffVar 16.33
# mainline: Min +12.50 %; Hmean 9.95, +1.57 %; Stddev sqrt(2 / 3) = 0.82, half of none's:
#           +50.00 % (less spread is better); Max (11 - 12) / 12 = -8.33 %
# bitmap:   Amean (1 - 10) / 10 = -90.00 %, significant: between asterisks
EXPECTED = """\
                                       none               mainline                 bitmap
Min      Mpages/s           8.00 (   0.00%)        9.00 (  12.50%)        1.00 ( -87.50%)
Amean    Mpages/s          10.00 (   0.00%)       10.00 (   0.00%)        1.00 * -90.00%*
Hmean    Mpages/s           9.80 (   0.00%)        9.95 (   1.57%)        1.00 * -89.79%*
Stddev   Mpages/s           1.63 (   0.00%)        0.82 (  50.00%)        0.00 ( 100.00%)
CoeffVar Mpages/s          16.33 (   0.00%)        8.16 (  50.00%)        0.00 ( 100.00%)
Max      Mpages/s          12.00 (   0.00%)       11.00 (  -8.33%)        1.00 ( -91.67%)
Min      lockwait-ms        0.00 (   0.00%)        0.50 (      - )        0.25 (      - )
Amean    lockwait-ms        0.00 (   0.00%)        0.50 (      - )        0.50 (      - )
Hmean    lockwait-ms           - (      - )        0.50 (      - )        0.38 (      - )
Stddev   lockwait-ms        0.00 (   0.00%)        0.00 (   0.00%)        0.29 (      - )
CoeffVar lockwait-ms           - (      - )        0.00 (      - )       57.74 (      - )
Max      lockwait-ms        0.00 (   0.00%)        0.50 (      - )        0.75 (      - )"""


def test_the_canned_comparison_prints_in_the_mmtests_layout():
    assert "\n".join(format_mmtests(FIGURES, LABELS)) == EXPECTED


def test_every_column_is_as_wide_as_its_header():
    lines = format_mmtests(FIGURES, LABELS)
    assert len({len(line) for line in lines}) == 1
    assert lines[0].split() == LABELS


def test_stars_only_on_the_mean_rows_and_only_where_the_interval_excludes_1():
    lines = format_mmtests(FIGURES, LABELS)
    starred = [line.split()[0] for line in lines if "*" in line]
    assert starred == ["Amean", "Hmean"]
    assert all("*" not in line for line in lines if "lockwait" in line)


def test_summary_and_percent_follow_mmtests():
    s = summary([2, 4])
    assert (s["Min"], s["Amean"], s["Max"]) == (2, 3, 4)
    assert round(s["Hmean"], 4) == round(2 / (1 / 2 + 1 / 4), 4)
    assert round(s["Stddev"], 4) == 1.4142 and round(s["CoeffVar"], 2) == 47.14
    assert summary([5])["Stddev"] is None and summary([])["Min"] is None
    assert percent(110, 100, True) == 10.0 and percent(110, 100, False) == -10.0
    assert percent(0, 0, True) == 0.0 and percent(1, 0, True) is None
