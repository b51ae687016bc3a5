"""search_documents, the tool a tool-calling model searches an index with: its result is the
index's own passages (as search() ranks them), numbered under their sources; `chat --tools
search_documents` hands it to the model instead of putting passages in every prompt."""

from __future__ import annotations

import pytest

from gptforge.retrieval import add_paths, search
from gptforge.retrieval.passages import retriever
from gptforge.retrieval.tool import NO_MATCH, search_tool
from gptforge.tools.calls import ToolCall
from gptforge.tools.registry import run_call

from helpers import assert_user_error, run_cli_here, write

DOCS = {
    "pump.md": "# The pump\n\nTo reset the pump, hold the red lever for five seconds.\n",
    "garden.txt": "Water the roses every morning.\nThe shed key is under the blue pot.\n",
    "boat.md": "# The boat\n\nThe boat is painted green and sleeps four.\n",
}


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("tool")
    for name, text in DOCS.items():
        write(root / "docs" / name, text)
    add_paths(root / "index", [root / "docs"], chunk_tokens=32, overlap=0, progress=False)
    return root / "index"


def test_the_tool_returns_the_indexs_passages_with_their_sources(index, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # sources shown as absolute paths: outside the current folder
    tool = search_tool(retriever(index, 2))
    assert tool.name == "search_documents"
    assert tool.schema["function"]["parameters"]["required"] == ["query"]
    result = run_call({tool.name: tool}, ToolCall("search_documents", {"query": "where is the shed key"}))
    hits = search(index, "where is the shed key", 2)
    expected = "\n\n".join(f"[{h.rank}] {h.where}\n{h.text.strip()}" for h in hits)
    assert "blue pot" in hits[0].text  # the fixture's point: the garden's chunk ranks first
    assert result == expected


def test_a_query_nothing_matches_says_so(index):
    tool = search_tool(retriever(index, 2))
    assert run_call({tool.name: tool}, ToolCall("search_documents", {"query": "zeppelin"})) == NO_MATCH
    assert run_call({tool.name: tool}, ToolCall("search_documents", {})).startswith("error: search_documents takes query")


def test_chat_gives_the_model_the_tool_and_no_passages_in_its_prompts(index, monkeypatch):
    import gptforge.cli.chat as chat_cli
    from gptforge import chat

    seen = {}
    monkeypatch.setattr(chat, "chat_in_terminal", lambda model, settings: seen.update(settings=settings))
    monkeypatch.setattr(chat_cli, "model_from_args", lambda args, dtype: "model")
    monkeypatch.setattr(chat_cli, "retriever_from_args", lambda args, model: retriever(args.index, args.passages))
    result = run_cli_here("chat", "--checkpoint", "unused", "--tools", "search_documents,calculator", "--index", str(index))
    assert result.returncode == 0, result.stderr
    settings = seen["settings"]
    assert [t.name for t in settings.tools] == ["search_documents", "calculator"] and settings.retrieve is None
    assert "red lever" in settings.tools[0].function(query="reset the pump")


def test_the_tool_without_an_index_is_one_line():
    assert_user_error(run_cli_here("chat", "--checkpoint", "unused", "--tools", "search_documents"), "--index DIR")
