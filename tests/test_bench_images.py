"""`genlab bench train-gan|train-vae`: every row is measured (the pytorch/examples-shaped DCGAN loop, genlab's
trainer in NCHW and channels-last layout) and the section lands in the Markdown file."""

import pytest

from genlab.bench import bench_train_image

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("family", ["gan", "vae"])
def test_every_layout_is_a_measured_row(tmp_path, family):
    md = tmp_path / "BENCH.md"
    rows = bench_train_image(family, ["tiny"], steps=2, write=md, warmup=1, data_source="shapes")
    loops = [r["loop"] for r in rows]
    expected = ["genlab trainer (NCHW)", "genlab trainer (channels-last)"]
    assert loops == (["pytorch/examples DCGAN shape (NCHW)"] if family == "gan" else []) + expected
    assert all(r["step_ms"] > 0 and r["images_per_s"] > 0 and r["wall_s"] > 0 for r in rows)
    assert rows[0]["ratio"] == 1.0 and all(r["ratio"] > 0 for r in rows)
    text = md.read_text()
    assert f"bench train-{family}" in text and "channels-last" in text and "| tiny |" in text
    assert ("pytorch/examples" in text) == (family == "gan")
