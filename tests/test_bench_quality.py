"""`genlab bench quality`: the studio's quality gate summed over prompts, from real bundles of a tiny model."""

from __future__ import annotations

import json

from genlab.bench_quality import HEADERS, PROMPTS, RunSummary, bench_quality, failure_name
from genlab.safety.quality import Thresholds, score_text


def test_failure_names_cover_every_threshold():
    th = Thresholds(max_perplexity=2.0)
    verdict = score_text("zz qq zz qq zz qq 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0", lambda t: 50.0, th)
    names = {failure_name(f) for f in verdict.failures}
    assert names == {"length", "repetition", "common-English share", "letters", "perplexity"}, verdict.failures


def test_bench_quality_summarises_the_bundles_manifests(trained_run, one_thread, tmp_path, gan_run):
    assert len(PROMPTS) == 50 and len(set(PROMPTS)) == 50
    out = tmp_path / "B.md"
    (summary,) = bench_quality([trained_run], gan_run, n=2, max_tokens=24, retries=1, write=out, device="cpu",
                               log=lambda *a: None)
    assert len(summary.bundles) == 2
    texts = [b["text"] for b in summary.bundles]
    # The row is what the manifests say: attempts, first-attempt and shipped pass counts.
    row = dict(zip(HEADERS, summary.row(), strict=True))
    attempts = [t["attempts"] for t in texts]
    assert all(a in (1, 2) for a in attempts) and row["mean attempts"] == f"{sum(attempts) / 2:.2f}"
    assert row["regenerated"].startswith(str(sum(a > 1 for a in attempts)))
    assert row["shipped passing"] == f"{sum(t['passed'] for t in texts) / 2:.0%}"
    for t in texts:  # a failed first attempt is retried once (retries=1); a passing one is not
        assert (t["attempts"] == 1) == t["tries"][0]["passed"]
    assert all(b["illustration"] is not None for b in summary.bundles)
    total = sum(summary.failures().values())
    assert total == sum(len(a["failures"]) for t in texts for a in t["tries"])
    md = out.read_text()
    assert "### Quality gate over studio prompts" in md and "genlab bench quality --text-run" in md
    assert json.dumps(summary.bundles)  # plain JSON records, as in the manifests


def test_row_medians_first_attempt_and_shipped():
    def tries(*scores):
        return [{"seed": i, "kind": "text", "passed": s["ok"], "scores": s, "failures": [] if s["ok"] else ["3 words < 40"]}
                for i, s in enumerate(scores)]

    a = tries({"ok": False, "words": 3, "repetition": 0.0, "english": 0.5, "perplexity": 90.0},
              {"ok": True, "words": 50, "repetition": 0.1, "english": 0.6, "perplexity": 30.0})
    b = tries({"ok": True, "words": 60, "repetition": 0.0, "english": 0.4, "perplexity": 20.0})
    s = RunSummary("r", bundles=[{"text": {"attempts": 2, "passed": True, "scores": a[1]["scores"], "tries": a}},
                                 {"text": {"attempts": 1, "passed": True, "scores": b[0]["scores"], "tries": b}}])
    row = dict(zip(HEADERS, s.row(), strict=True))
    assert row["regenerated"] == "1 (50%)" and row["mean attempts"] == "1.50"
    assert row["first attempt passes"] == "50%" and row["shipped passing"] == "100%"
    assert row["words"] == "32 -> 55" and row["perplexity"] == "55.0 -> 25.0"
    assert s.failures() == {"length": 1}
