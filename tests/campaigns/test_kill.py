"""The kill campaign, bounded: SIGKILL put, get (empty and in place) and gc, then check.

The long run is `python -m tests.campaigns.kill --seed N --seconds S`; this one
keeps a fixed seed, a smaller tree, one round of each command and a second of
each while its time budget lasts.
"""

from __future__ import annotations

from tests.campaigns.kill import COMMANDS, Campaign


def test_killed_commands_leave_a_sound_store_and_destination_and_reruns_finish(tmp_path):
    campaign = Campaign(tmp_path, seed=7, files=80, big=2, big_mib=2, measure_runs=1)
    campaign.run(seconds=12, rounds=2 * len(COMMANDS), only=list(COMMANDS), min_rounds=4)
    report = campaign.report()
    print(report)
    f = campaign.fig
    assert f.violations == [], report
    assert all(f.rounds[c] >= 1 for c in COMMANDS), report
    assert sum(f.landed.values()) >= 2, report  # kills land mid-run, not only after exit
    # Every round's re-run completed (a put's may only be refused for its ref, exit 6).
    assert sum(f.reruns.values()) + sum(f.ref_refused.values()) == sum(f.rounds.values()), report
