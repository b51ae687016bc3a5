"""`gptforge chat` as a user meets it: in a terminal (pexpect), typing, Ctrl-C, /exit."""

from __future__ import annotations

import subprocess
import sys

import pexpect
import pytest

from gptforge.generate import generate_text
from gptforge.weights import load_any

# The CLI with every forward pass slowed down, so an answer is still streaming when Ctrl-C comes.
SLOW_CLI = ("import sys, time; from gptforge.model import GPT; forward = GPT.forward; "
            "GPT.forward = lambda self, *a, **k: (time.sleep(0.05), forward(self, *a, **k))[1]; "
            "from gptforge.cli import main; sys.exit(main(sys.argv[1:]))")


def reference(checkpoint, prompt, n):
    model = load_any(checkpoint)
    return "".join(generate_text(model, prompt, n, temperature=0.0, stop_at_eos=True))


def spawn(*args, slow=False):
    argv = ["-c", SLOW_CLI] if slow else ["-m", "gptforge"]
    return pexpect.spawn(sys.executable, argv + ["chat", *args], encoding="utf-8", timeout=60,
                         dimensions=(50, 400))


def answer_line(child) -> str:
    """The text after "model> " up to the end of its line."""
    child.expect_exact("model> ")
    child.expect_exact("\r\n")
    return child.before


def test_a_base_model_continues_each_line_and_ctrl_c_stops_only_the_answer(tiny_checkpoint):
    child = spawn("--checkpoint", str(tiny_checkpoint), "--temperature", "0", "--max-new-tokens", "40", slow=True)
    child.expect_exact("plain continuation mode")
    child.expect_exact("you> ")
    child.sendline("Hello there")
    child.expect_exact("model> ")
    child.expect(r"\S")  # the answer has begun
    child.sendintr()
    child.expect_exact("[stopped]")
    child.expect_exact("you> ")  # still running, ready for the next line
    child.sendline("Hello there")
    assert answer_line(child) == reference(tiny_checkpoint, "Hello there", 40)
    child.expect_exact("you> ")
    child.sendintr()  # at the prompt: a hint, not an exit
    child.expect_exact("/exit or Ctrl-D to leave")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_chat_reads_piped_input_to_the_end(tiny_checkpoint):
    out = subprocess.run([sys.executable, "-m", "gptforge", "chat", "--checkpoint", str(tiny_checkpoint),
                          "--temperature", "0", "--max-new-tokens", "8"],
                         input="Once upon\nOnce upon\n", capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    answers = [line.split("model> ", 1)[1] for line in out.stdout.splitlines() if "model> " in line]
    expected = reference(tiny_checkpoint, "Once upon", 8)
    assert answers == [expected, expected]  # a base model: no history, the same continuation twice


@pytest.mark.parametrize("args, fragment", [(["--temperature", "-1"], "temperature"),
                                            (["--max-new-tokens", "0"], "--max-new-tokens")])
def test_bad_flags_are_one_line(tiny_checkpoint, args, fragment):
    from helpers import assert_user_error, run_cli

    assert_user_error(run_cli("chat", "--checkpoint", str(tiny_checkpoint), *args), fragment)
