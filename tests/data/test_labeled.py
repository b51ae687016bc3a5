"""Classification data: CSV/TSV/JSONL with detected or named columns, bad records in one line,
class-balanced sampling and loss weights."""

import numpy as np
import pytest

from gptforge.data.labeled import (
    LabeledBatches,
    class_names,
    class_weights,
    label_ids,
    pad_batch,
    read_labeled,
    read_texts,
)
from gptforge.errors import UserError


def test_the_three_formats_read_alike(tmp_path):
    (tmp_path / "a.csv").write_text('sentence,category\n"Hello, there",pos\nbye,neg\n')
    (tmp_path / "a.tsv").write_text("sentence\tcategory\nHello, there\tpos\nbye\tneg\n")
    (tmp_path / "a.jsonl").write_text('{"sentence": "Hello, there", "category": "pos"}\n{"sentence": "bye", "category": "neg"}\n')
    for name in ("a.csv", "a.tsv", "a.jsonl"):
        records = read_labeled(str(tmp_path / name))
        assert [(r.text, r.label) for r in records] == [("Hello, there", "pos"), ("bye", "neg")]
    assert class_names(records, "x") == ["neg", "pos"]
    assert label_ids(records, ["neg", "pos"]).tolist() == [1, 0]


def test_named_columns_and_numeric_labels(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"body": "one", "y": 1}\n{"body": "two", "y": 0}\n')
    records = read_labeled(str(tmp_path / "d.jsonl"), text_column="body", label_column="y")
    assert [r.label for r in records] == ["1", "0"]
    assert read_texts(str(tmp_path / "d.jsonl"), "body") == [{"text": "one"}, {"text": "two"}]


BAD = {
    "nolabel.csv": ("text,other\nhi,1\n", "record 1 has no label column"),
    "empty.jsonl": ('{"text": "a", "label": "x"}\n{"text": "  ", "label": "y"}\n', "record 2: the text"),
    "nullabel.jsonl": ('{"text": "a", "label": "x"}\n{"text": "b", "label": null}\n', "record 2 has no label"),
    "broken.jsonl": ('{"text": "a", "label": "x"}\n{"text": \n', "record 2 is not valid JSON"),
    "extra.csv": ("text,label\na,x,oops\n", "record 1 has more fields"),
    "none.csv": ("text,label\n", "holds no records"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_records_are_one_line_naming_file_and_record(tmp_path, name):
    content, message = BAD[name]
    (tmp_path / name).write_text(content)
    with pytest.raises(UserError, match=message) as e:
        read_labeled(str(tmp_path / name))
    assert str(tmp_path / name) in str(e.value) and "\n" not in str(e.value)


def test_one_class_and_unknown_labels_are_refused(tmp_path):
    (tmp_path / "one.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "x"}\n')
    with pytest.raises(UserError, match="every training record has the label 'x'"):
        class_names(read_labeled(str(tmp_path / "one.jsonl")), str(tmp_path / "one.jsonl"))
    with pytest.raises(UserError, match="record 1: label 'x' is not one of the model's classes"):
        label_ids(read_labeled(str(tmp_path / "one.jsonl")), ["a", "b"])


def test_balanced_sampling_sees_each_class_about_equally():
    labels = np.array([0] * 90 + [1] * 10)
    ids = [np.array([i + 1]) for i in range(100)]
    batches = LabeledBatches(ids, labels, 10, seed=3, balance=True)
    seen = np.concatenate([b[1].numpy() for epoch in range(20) for b in batches.batches(epoch)])
    assert 0.4 < seen.mean() < 0.6  # 0.1 without balancing
    plain = LabeledBatches(ids, labels, 10, seed=3)
    assert sorted(np.concatenate([b[1].numpy() for b in plain.batches(0)]).tolist()) == sorted(labels.tolist())
    # resumable: batch k of an epoch is the same whether the epoch starts at 0 or at k
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(list(batches.batches(4))[3:], batches.batches(4, start=3)))


def test_class_weights_are_inverse_to_the_class_share():
    w = class_weights(np.array([0, 0, 0, 1]), 2)
    assert w.tolist() == pytest.approx([4 / 6, 2.0])
    assert (w[np.array([0, 0, 0, 1])].mean()) == pytest.approx(1.0)


def test_padding_either_side():
    rows = [np.array([1, 2]), np.array([3])]
    assert pad_batch(rows, 9).tolist() == [[1, 2], [3, 9]]
    assert pad_batch(rows, 9, left=True).tolist() == [[1, 2], [9, 3]]


def test_the_bundled_set_has_two_balanced_classes():
    records = read_labeled("builtin:sources")
    assert class_names(records, "") == ["shakespeare", "tasks"]
    assert sum(r.label == "tasks" for r in records) == sum(r.label == "shakespeare" for r in records) == 300
