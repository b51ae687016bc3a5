"""`search_documents`, the tool a tool-calling model searches an index with (`gptforge chat
--tools search_documents --index DIR`): its result is the query's best passages, numbered and under
their sources as the context block shows them, so the model reads and cites them the same way. It
lives here, not in tools/, because it needs an index (tools/ sits below retrieval)."""

from __future__ import annotations

from collections.abc import Callable

from ..tools.registry import Tool, tool_from_function

NAME = "search_documents"
NO_MATCH = "no passage matches"


def passages_text(passages: list[dict]) -> str:
    """The passages as a tool result: "[n] source", then the text, a blank line between them."""
    return "\n\n".join(f"[{n}] {p['source']}\n{p['text']}" for n, p in enumerate(passages, 1)) or NO_MATCH


def search_tool(retrieve: Callable[[str], list[dict]]) -> Tool:
    """The search_documents tool over a retriever (passages.retriever: the index and its k)."""

    def search_documents(query: str) -> str:
        """Search the user's documents; returns the best passages, each under its source (file:lines).

        query: the words to look for, e.g. the names and the subject of the question
        """
        return passages_text(retrieve(query))

    return tool_from_function(search_documents, NAME)
