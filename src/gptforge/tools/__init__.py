"""Tool calling on the use side: reading a model's calls out of its text, and the local tools
`gptforge chat` runs.

    calls.py       a reply's text -> its content and its calls (the Hermes convention of tokenizer/chat.py)
    calculator.py  exact arithmetic on `ast`, bounded, never eval
    clock.py       today's date and time, and date arithmetic
    registry.py    tools as (schema, function): the built-in ones, a user's module, running a call
    structured.py  valid calls and JSON by construction: a reply's grammar, a per-row logit mask (llguidance)
"""
