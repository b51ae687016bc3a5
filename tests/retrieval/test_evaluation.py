"""`eval --task retrieval` and `--task qa`: recall@k and MRR on queries whose rankings are known,
SQuAD's answer scores on hand-worked cases, answers with and without the passages."""

from __future__ import annotations

import json

import pytest

from gptforge.errors import UserError
from gptforge.retrieval import add_paths
from gptforge.retrieval.evaluation import evaluate_qa, evaluate_retrieval, normalize_answer, token_f1

from helpers import assert_user_error, run_cli_here, write


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluation")
    write(root / "docs" / "pump.md", "The pump lever is red.\n")
    write(root / "docs" / "boat.txt", "The boat is green.\n")
    write(root / "docs" / "sub" / "boat.txt", "A boat, a boat, a boat with a lever.\n")
    add_paths(root / "index", [root / "docs"], progress=False)
    return root / "index"


def jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_recall_and_mrr_on_known_rankings(index, tmp_path):
    data = jsonl(tmp_path / "q.jsonl", [
        {"query": "pump", "relevant": ["pump.md"]},  # found first: recall 1, MRR 1
        {"query": "lever", "relevant": ["pump.md"]},  # in two files once each: the shorter, pump.md, first
        {"query": "boat", "relevant": ["docs/boat.txt", "nowhere.txt"]},  # sub/boat.txt says boat 3 times: first
        {"query": "kettle", "relevant": ["pump.md"]},  # nothing matches
    ])
    result = evaluate_retrieval(index, data, k=2)
    # recall: 1, 1, 1/2 (nowhere.txt is never found), 0; MRR: 1, 1, 1/2, 0
    assert result == {"task": "retrieval", "queries": 4, "k": 2, "recall@2": 2.5 / 4, "mrr": 2.5 / 4}
    one = evaluate_retrieval(index, data, k=1)
    assert one["recall@1"] == 2 / 4 and one["mrr"] == 2 / 4  # "boat": docs/boat.txt is second


@pytest.mark.parametrize("prediction, gold, exact, f1", [
    ("The Eiffel Tower!", "eiffel tower", 1.0, 1.0),
    ("a red lever", "the red lever", 1.0, 1.0),
    ("red lever on the left", "red lever", 0.0, 2 * (2 / 4) * 1 / (2 / 4 + 1)),
    ("blue", "red", 0.0, 0.0),
    ("", "", 1.0, 1.0),
    ("Nar Zaisaist [1]", "Nar Zaisaist", 1.0, 1.0),  # a citation says where, it is not the answer
    ("312 crowns [2][3].", "312 crowns", 1.0, 1.0),
    ("[1]", "1", 0.0, 0.0),  # a citation alone answers nothing
])
def test_squad_answer_scores(prediction, gold, exact, f1):
    assert float(normalize_answer(prediction) == normalize_answer(gold)) == exact
    assert token_f1(prediction, gold) == pytest.approx(f1)


def test_qa_scores_answers_with_and_without_the_passages(index, tmp_path, monkeypatch):
    def fake_answer(model, question, retrieve, max_new_tokens=64, system=None):
        # reads the answer off the best passage ("The pump lever is red." -> "red"), else guesses
        passages = retrieve(question) if retrieve else []
        return (passages[0]["text"].split()[-1].strip(".") if passages else "blue"), passages

    monkeypatch.setattr("gptforge.retrieval.ask.answer", fake_answer)
    data = jsonl(tmp_path / "qa.jsonl", [{"question": "What colour is the pump lever?", "answer": "red"},
                                         {"question": "What colour is the boat?", "answers": ["green", "Green."]}])
    result = evaluate_qa(None, index, data, k=1)
    assert result == {"task": "qa", "questions": 2, "k": 1, "exact_with": 1.0, "f1_with": 1.0,
                      "exact_without": 0.0, "f1_without": 0.0}


def test_bad_files_are_one_line(index, tmp_path):
    with pytest.raises(UserError, match="line 2: needs 'query'"):
        evaluate_retrieval(index, jsonl(tmp_path / "a.jsonl", [{"query": "x", "relevant": ["a"]}, {"q": 1}]))
    with pytest.raises(UserError, match="\"relevant\": must be text or a non-empty list of texts"):
        evaluate_retrieval(index, jsonl(tmp_path / "b.jsonl", [{"query": "x", "relevant": []}]))
    with pytest.raises(UserError, match="needs 'answer' or 'answers'"):
        evaluate_qa(None, index, jsonl(tmp_path / "c.jsonl", [{"question": "x"}]))


def test_the_cli(index, tmp_path, chat_checkpoint, tiny_checkpoint):
    data = jsonl(tmp_path / "q.jsonl", [{"query": "pump", "relevant": ["pump.md"]}])
    result = run_cli_here("eval", "--task", "retrieval", "--index", str(index), "--data", str(data), "--json")
    assert json.loads(result.stdout) == {"task": "retrieval", "queries": 1, "k": 5, "recall@5": 1.0, "mrr": 1.0}
    qa = jsonl(tmp_path / "qa.jsonl", [{"question": "What colour is the pump lever?", "answer": "red"}])
    result = run_cli_here("eval", "--task", "qa", "--index", str(index), "--data", str(qa), "--checkpoint",
                          str(chat_checkpoint), "--max-new-tokens", "4")
    assert result.returncode == 0 and "with retrieval     exact" in result.stdout, result.stderr
    assert_user_error(run_cli_here("eval", "--task", "retrieval", "--data", str(data)), "needs --index DIR")
    assert_user_error(run_cli_here("eval", "--task", "qa", "--index", str(index), "--data", str(qa), "--checkpoint",
                                   str(tiny_checkpoint)), "needs a chat model")
    assert_user_error(run_cli_here("eval", "--data", str(data)), "--task loss needs --checkpoint")
