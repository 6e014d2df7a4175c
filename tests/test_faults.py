"""The fault campaign (issue 8) in its short CI form, on real parts and real photos."""

from __future__ import annotations

import json

from edge.tools import faults


def test_the_short_campaign_survives_every_fault(real_data, tmp_path, capsys):
    out = tmp_path / "faults.json"
    code = faults.main(["--short", "--json", str(out), "--work", str(tmp_path / "work")])
    printed = capsys.readouterr().out
    outcomes = {o["fault"]: o for o in json.loads(out.read_text())}
    failed = {name: o for name, o in outcomes.items() if not o["ok"]}
    assert code == 0 and not failed, failed
    assert len(outcomes) == 9 and all(o["injected"] > 0 for o in outcomes.values())
    assert sum(o["gallery_records_lost"] for o in outcomes.values()) == 0
    assert "gallery records lost 0 (must be 0)" in printed and "crashes 0 (must be 0)" in printed
    camera = outcomes["camera stream cut and restored"]["detail"]
    assert camera["reconnects"] == outcomes["camera stream cut and restored"]["injected"]
    assert camera["outage_seconds_reported"] > 0
    soak = outcomes["soak (4 faces per frame)"]["detail"]
    assert soak["faces"] > soak["frames"]  # several faces a frame, really detected


def test_a_fault_that_is_not_survived_fails_the_campaign(monkeypatch, tmp_path, capsys, real_data):
    bad = faults.Outcome("pretend fault", injected=2, survived=1)
    monkeypatch.setattr(faults, "campaign", lambda short, work, seed=0: [bad])
    assert faults.main(["--short", "--work", str(tmp_path)]) == 1
    assert "pretend fault" in capsys.readouterr().out
    lost = faults.Outcome("lost record", injected=1, survived=1, gallery_records_lost=1)
    monkeypatch.setattr(faults, "campaign", lambda short, work, seed=0: [lost])
    assert faults.main(["--short", "--work", str(tmp_path)]) == 1
