import json

import numpy as np
import pytest
import torch
from oracle.tolerances import assert_close_fp

from vmae2.data.labels import (
    LabelMap,
    convert_head,
    head_index,
    merge_label_maps,
    merge_labeled_lists,
    normalize_name,
    read_aliases,
    read_named_list,
    read_official_index,
    video_id,
    video_ids,
)
from vmae2.data.lists import VideoRecord, read_finetune_csv


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def _rec(path, label, source="s"):
    return VideoRecord(path, 0, -1, label, True, "", 4, source)


# -- normalisation and reading ------------------------------------------------------------------------------

def test_normalize_name():
    assert normalize_name("  Passing American football (in game) ") == "passing american football (in game)"
    assert normalize_name("passing_american_football_(in_game)") == "passing american football (in game)"
    assert normalize_name('"air   drumming"') == "air drumming"
    assert normalize_name("dying hair") != normalize_name("dyeing hair")  # no fuzzy matching


def test_read_text_json_list_and_dicts(tmp_path):
    names = ["abseiling", "Air Drumming", "answering questions"]
    txt = LabelMap.read(_write(tmp_path, "a.txt", "\n".join(names) + "\n\n"))
    lst = LabelMap.read(_write(tmp_path, "b.json", json.dumps(names)))
    d = LabelMap.read(_write(tmp_path, "c.json", json.dumps({"answering questions": 2, "abseiling": 0,
                                                              "air_drumming": 1})))
    inv = LabelMap.read(_write(tmp_path, "d.json", json.dumps({"1": "air drumming", "0": "abseiling",
                                                                "2": "answering questions"})))
    assert txt.names == tuple(names) and lst.names == tuple(names)
    assert txt == lst == d == inv
    assert len(txt) == 3 and txt.id("air_drumming") == 1 and "AIR DRUMMING" in txt and "x" not in txt
    assert d[1] == "air_drumming" and d.get("nope") is None
    out = tmp_path / "out.txt"
    d.write(out)
    assert LabelMap.read(out).names == d.names


def test_read_errors(tmp_path):
    with pytest.raises(ValueError, match=r"dup\.txt:2 'Air_Drumming' and .*dup\.txt:4 'air drumming'"):
        LabelMap.read(_write(tmp_path, "dup.txt", "abseiling\nAir_Drumming\nzumba\nair drumming\n"))
    with pytest.raises(ValueError, match=r"blank\.txt:2: blank line"):
        LabelMap.read(_write(tmp_path, "blank.txt", "a\n\nb\n"))
    with pytest.raises(ValueError, match=r"exactly 0\.\.2 .*repeated ids: \[1\], missing ids: \[0\]"):
        LabelMap.read(_write(tmp_path, "ids.json", json.dumps({"a": 1, "b": 1, "c": 2})))
    with pytest.raises(ValueError, match=r"out-of-range ids: \[5\]"):
        LabelMap.read(_write(tmp_path, "ids2.json", json.dumps({"a": 0, "b": 5})))
    with pytest.raises(ValueError, match="not an integer"):
        LabelMap.read(_write(tmp_path, "ids3.json", json.dumps({"a": 0, "b": "1x", "c": True})))
    with pytest.raises(ValueError, match="entry 1"):
        LabelMap.read(_write(tmp_path, "l.json", json.dumps(["a", 3])))
    with pytest.raises(ValueError, match="not valid JSON"):
        LabelMap.read(_write(tmp_path, "bad.json", "[\"a\","))
    m = LabelMap(["playing guitar", "playing violin", "zumba"])
    with pytest.raises(ValueError, match=r"unknown class name 'playing guitarr'.*closest: 'playing guitar'"):
        m.id("playing guitarr")


# -- merging ------------------------------------------------------------------------------------------------

K400 = LabelMap(["abseiling", "Air drumming", "dying hair", "zumba"], source="k400")
K600 = LabelMap(["air_drumming", "dyeing hair", "zumba", "yoga", "abseiling"], source="k600")
K700 = LabelMap(["yoga", "abseiling", "tai chi"], source="k700")


def test_merge_label_maps_first_seen_order():
    merged, maps = merge_label_maps([K400, K600, K700])
    assert merged.names == ("abseiling", "Air drumming", "dying hair", "zumba", "dyeing hair", "yoga", "tai chi")
    assert [m.tolist() for m in maps] == [[0, 1, 2, 3], [1, 4, 3, 5, 0], [5, 0, 6]]
    assert all(m.dtype == np.int64 for m in maps)
    # with aliases the renamed class merges (first-seen spelling kept)
    merged, maps = merge_label_maps([K400, K600, K700], aliases={"dyeing hair": "dying hair"})
    assert merged.names == ("abseiling", "Air drumming", "dying hair", "zumba", "yoga", "tai chi")
    assert maps[1].tolist() == [1, 2, 3, 4, 0]
    # merging is consistent: every old class maps to the same normalised name (or its alias)
    for m, mp in zip([K400, K600, K700], maps):
        for i, n in enumerate(m):
            assert normalize_name(merged[mp[i]]) in (normalize_name(n), "dying hair")


def test_aliases(tmp_path):
    groups = read_aliases(_write(tmp_path, "g.json", json.dumps([["dying hair", "Dyeing_Hair"]])))
    assert groups == {"dyeing hair": "dying hair"}
    assert read_aliases(_write(tmp_path, "d.json", json.dumps({"Dyeing hair": "dying hair"}))) == groups
    with pytest.raises(ValueError, match="both a canonical name and an alias"):
        read_aliases(_write(tmp_path, "c.json", json.dumps({"a": "b", "b": "c"})))
    with pytest.raises(ValueError, match="become the same class"):
        merge_label_maps([LabelMap(["a", "b"])], aliases={"a": "b"})


def test_video_id():
    assert video_id("/k400/train/abc-DEF_123_000010_000020.mp4") == "abc-DEF_123"
    assert video_id("k/__-_-_a-b-c_000001_000011.mkv") == "__-_-_a-b-c"
    assert video_id("frames/abc-DEF_123_000010_000020/") == "abc-DEF_123"  # rawframe folder
    assert video_id("some/clip_01.avi") == "clip_01"  # not a Kinetics name: the stem
    assert video_id("a/abc-DEF_12_000010_000020.mp4") == "abc-DEF_12_000010_000020"  # 10-char id: stem


def test_merge_labeled_lists_dedup_and_stats():
    k400 = [_rec("k400/aaaaaaaaaaa_000000_000010.mp4", 2, "k400"),
            _rec("k400/bbbbbbbbb_b_000000_000010.mp4", 3, "k400"),
            _rec("k400/cc-cccccccc_000005_000015.mp4", 0, "k400")]
    k600 = [_rec("k600/bbbbbbbbb_b_000000_000010.mp4", 2, "k600"),   # dup of k400[1], same class zumba
            _rec("k600/aaaaaaaaaaa_000030_000040.mp4", 0, "k600"),   # dup (other clip of same video), conflict
            _rec("k600/ddddddddddd_000000_000010.mp4", 3, "k600"),
            _rec("k600/ddddddddddd_000000_000010.mp4", 3, "k600")]   # dup within the source
    k700 = [_rec("k700/eeeeeeeeeee_000000_000010.mp4", 2, "k700"),
            _rec("k700/zzzzzzzzzzz_000000_000010.mp4", 0, "k700")]
    out = merge_labeled_lists([(k400, K400), (k600, K600), (k700, K700)], exclude={"zzzzzzzzzzz"})
    merged = out.label_map
    assert [r.path for r in out.records] == ["k400/aaaaaaaaaaa_000000_000010.mp4", "k400/bbbbbbbbb_b_000000_000010.mp4",
                                             "k400/cc-cccccccc_000005_000015.mp4", "k600/ddddddddddd_000000_000010.mp4",
                                             "k700/eeeeeeeeeee_000000_000010.mp4"]
    assert [merged[r.label] for r in out.records] == ["dying hair", "zumba", "abseiling", "yoga", "tai chi"]
    assert [r.source for r in out.records] == ["k400", "k400", "k400", "k600", "k700"]
    s = {st.name: st for st in out.stats}
    assert (s["k400"].kept, s["k400"].duplicates, s["k400"].excluded) == (3, 0, 0)
    assert (s["k600"].total, s["k600"].kept, s["k600"].duplicates, s["k600"].label_conflicts) == (4, 1, 3, 1)
    assert (s["k700"].kept, s["k700"].excluded) == (1, 1)
    assert "kept 1, duplicates 3" in out.summary()
    # validation-style: drop what is in train
    val_recs = [_rec("v/aaaaaaaaaaa_000000_000010.mp4", 0), _rec("v/fffffffffff_000000_000010.mp4", 1)]
    val = merge_labeled_lists([(val_recs, K400)], label_map=merged, exclude=video_ids(out.records))
    assert [r.path for r in val.records] == ["v/fffffffffff_000000_000010.mp4"]
    assert merged[val.records[0].label] == "Air drumming"


def test_merge_labeled_lists_target_map_and_errors():
    target = LabelMap(["tai chi", "yoga", "zumba", "abseiling", "air drumming", "dying hair", "dyeing hair"])
    out = merge_labeled_lists([([_rec("a.mp4", 3)], K400), ([_rec("b.mp4", 3)], K600)], label_map=target)
    assert [r.label for r in out.records] == [2, 1] and out.label_map is target
    assert out.mappings[0].tolist() == [3, 4, 5, 2]
    with pytest.raises(ValueError, match=r"1 classes of k700 are not in .*'tai chi'"):
        merge_labeled_lists([([_rec("a.mp4", 0)], K700)], label_map=LabelMap(["yoga", "abseiling"]))
    with pytest.raises(ValueError, match=r"source 1 \(k600\), record 0 \(b.mp4\): label 5 is outside \[0, 5\)"):
        merge_labeled_lists([([_rec("a.mp4", 0)], K400), ([_rec("b.mp4", 5, "k600")], K600)])
    with pytest.raises(ValueError, match="label -1"):
        merge_labeled_lists([([_rec("a.mp4", -1)], K400)])


def test_merge_with_read_finetune_csv(tmp_path):
    a = read_finetune_csv(_write(tmp_path, "a.csv", "x/aaaaaaaaaaa_000000_000010.mp4 1\ny.mp4 3\n"), num_classes=4)
    b = read_finetune_csv(_write(tmp_path, "b.csv", "x/aaaaaaaaaaa_000000_000010.mp4 0\nz.mp4 3\n"), num_classes=5)
    out = merge_labeled_lists([(a, K400), (b, K600)])
    assert [(r.path, out.label_map[r.label]) for r in out.records] == [
        ("x/aaaaaaaaaaa_000000_000010.mp4", "Air drumming"), ("y.mp4", "zumba"), ("z.mp4", "yoga")]


def test_read_named_list(tmp_path):
    m = LabelMap(["playing guitar", "air drumming", "passing American football (in game)"])
    p = _write(tmp_path, "n.txt", "# comment\na.mp4 Playing Guitar\nb.mp4   passing_american_football_(in_game)\n")
    recs = read_named_list(p, m, data_root="/data")
    assert [(r.path, r.label, r.is_video) for r in recs] == [("/data/a.mp4", 0, True), ("/data/b.mp4", 2, True)]
    p = _write(tmp_path, "n.csv", "my dir/a b.mp4,air drumming\n")
    assert read_named_list(p, m, sep=",")[0].path == "my dir/a b.mp4"
    p = _write(tmp_path, "r.txt", "frames/x 30 air drumming\n")
    r = read_named_list(p, m, kind="rawframes")[0]
    assert (r.total, r.start, r.label, r.is_video, r.fname_tmpl) == (30, 1, 1, False, "img_{:05}.jpg")
    p = _write(tmp_path, "bad.txt", "a.mp4 playing guitar\nb.mp4 playing guittar\n")
    with pytest.raises(ValueError, match=r"bad\.txt:2: unknown class name 'playing guittar'.*closest: "
                                         r"'playing guitar'"):
        read_named_list(p, m)
    p = _write(tmp_path, "alias.txt", "a.mp4 drumming in the air\n")
    assert read_named_list(p, m, aliases={"drumming in the air": "air drumming"})[0].label == 1
    with pytest.raises(ValueError, match="expected 2 columns"):
        read_named_list(_write(tmp_path, "one.txt", "a.mp4\n"), m)


# -- head conversion ----------------------------------------------------------------------------------------

def test_head_conversion_equals_logit_columns(tmp_path):
    merged, _ = merge_label_maps([K400, K600, K700])  # 7 classes: stands in for K710
    target = LabelMap(["ZUMBA", "tai_chi", "abseiling", "dying hair"])  # stands in for K400 (other order)
    idx = head_index(merged, target)
    assert idx.dtype == torch.long and idx.tolist() == [3, 6, 0, 2]
    torch.manual_seed(0)
    big = torch.nn.Linear(16, len(merged))
    sd = {"fc_norm.weight": torch.ones(16), "head.weight": big.weight.detach(), "head.bias": big.bias.detach()}
    conv = convert_head(sd, idx)
    assert conv["fc_norm.weight"] is sd["fc_norm.weight"] and sd["head.weight"].shape[0] == 7
    small = torch.nn.Linear(16, len(target))
    small.load_state_dict({"weight": conv["head.weight"], "bias": conv["head.bias"]})
    x = torch.randn(5, 16)
    assert_close_fp(small(x), big(x)[:, idx])  # a 4-row and a 7-row GEMM: other kernels, not bit-exact
    # the official index file format gives the same conversion
    f = _write(tmp_path, "label_7to4.json", json.dumps(idx.tolist()))
    assert torch.equal(read_official_index(f, num_rows=7, num_classes=4), idx)
    # prefixed keys
    conv2 = convert_head({"module.head.weight": big.weight.detach()}, idx, keys=("module.head.weight",))
    assert torch.equal(conv2["module.head.weight"], conv["head.weight"])  # row gather: pure data movement


def test_head_conversion_errors(tmp_path):
    with pytest.raises(ValueError, match=r"2 classes of .* are not in .*'yoga'.*'tai chi'"):
        head_index(K400, K700)
    with pytest.raises(ValueError, match="none of"):
        convert_head({"fc.weight": torch.zeros(3, 2)}, torch.tensor([0]))
    with pytest.raises(ValueError, match="has 3 rows"):
        convert_head({"head.weight": torch.zeros(3, 2)}, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"entry 1 is 710, outside \[0, 710\)"):
        read_official_index(_write(tmp_path, "a.json", "[0, 710]"))
    with pytest.raises(ValueError, match="entry 0 is 1.5"):
        read_official_index(_write(tmp_path, "b.json", "[1.5]"))
    with pytest.raises(ValueError, match="2 entries but the target head has 400"):
        read_official_index(_write(tmp_path, "c.json", "[1, 2]"), num_classes=400)
