"""Figures the reliability tests (`pytest -m reliability`) add up, printed as one summary line.

Each test counts what it tried (`tally["inputs"] += n`); conftest prints the line at the end
of the session, ready to paste into a report.
"""

from collections import Counter

tally: Counter = Counter()


def summary_line() -> str:
    t = tally
    return (
        f"reliability: {t['inputs']} inputs tried ({t['rejected']} refused with a clear error), "
        f"{t['crashes']} crashes; {t['faults']} faults injected ({t['kills']} kill -9, "
        f"{t['corruptions']} damaged or planted files, {t['hostile_clients']} hostile clients), "
        f"{t['resumptions']} crash resumptions ({t['rows_reused']} cached rows reused, "
        f"{t['artifacts_checked']} artifacts read back whole after the kills), "
        f"{t['lost']} lost and {t['duplicated']} duplicated records; "
        f"soak: {t['soak_requests']} requests, resting server RSS growth {t['soak_rss_growth_kb'] / 1024:+.1f} MB"
    )
