"""One question answered from an index (`gptforge ask`): the question's passages retrieved into the
system turn of a chat prompt (trimmed to fit the context with room for the answer), the answer
streamed, and the passages it was given, for its list of sources."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

from ..chat import Conversation, stop_ids
from ..generate import stream_text
from ..sampling import Sampling
from ..model import GPT


def question_prompt(model: GPT, question: str, retrieve: Callable[[str], list[dict]] | None,
                    system: str | None = None, answer_room: int = 256) -> tuple[list[int], list[dict]]:
    """(prompt ids, the passages in it) of one question to a chat model; `retrieve` None: none."""
    conversation = Conversation(model, system, answer_room, retrieve=retrieve)
    ids, _ = conversation.prompt(question)
    return ids, conversation.passages


def stream_answer(model: GPT, ids: list[int], sampling: Sampling) -> Iterator[str]:
    """The chat model's answer to the prompt `ids`, as it is produced, up to the end of its turn."""
    budget = min(sampling.max_new_tokens, model.config.context_length - len(ids))
    yield from stream_text(model, ids, dataclasses.replace(sampling, max_new_tokens=budget,
                                                           stop_ids=stop_ids(model, chat=True)))


def answer(model: GPT, question: str, retrieve: Callable[[str], list[dict]] | None, max_new_tokens: int = 64,
           system: str | None = None) -> tuple[str, list[dict]]:
    """(the greedy answer, the passages it was given): what `eval --task qa` scores."""
    ids, passages = question_prompt(model, question, retrieve, system, max_new_tokens)
    return "".join(stream_answer(model, ids, Sampling(max_new_tokens, temperature=0.0))), passages
