"""The fixed split: stable, about a tenth each held out, and one person's numbered run of files on one side."""
from collections import Counter

from sorter.splits import BLOCK, split_of


def test_split_is_stable_ignores_the_suffix_and_holds_out_about_a_tenth_each():
    names = [f"faces/male/{i}_0_1_2017.jpg.chip.jpg" for i in range(3000)]  # UTKFace-like: one person a file
    counts = Counter(split_of(name) for name in names)
    assert [split_of(name) for name in names] == [split_of(name) for name in names]
    assert split_of("faces/male/a.jpg") == split_of("faces/male/a.webp")
    for split in ("test", "valid"):
        assert 0.07 < counts[split] / len(names) < 0.13


def test_numbered_files_of_one_block_share_a_split_and_blocks_spread():
    blocks = [{split_of(f"wild/female/woman_{b * BLOCK + i}.jpg") for i in range(BLOCK)} for b in range(300)]
    assert all(len(splits) == 1 for splits in blocks)
    counts = Counter(splits.pop() for splits in blocks)
    assert counts["test"] and counts["valid"] and counts["train"] > counts["test"] + counts["valid"]
