"""Sampling settings: how a continuation is drawn (temperature, top-k, top-p, seed, stops, length),
one checked type for generation, the terminal chat, the server, exports and training samples."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import UserError

# The one rule for sampling values, shared by the CLI and the server (which names its fields).
# A temperature below MIN_TEMPERATURE is greedy decoding in all but name, and above it logits / T
# stays finite in float32 for any logit below 1e32 (at 1e-300 the divisor rounds to 0 and every
# probability becomes NaN). The most likely token has probability >= 1/vocabulary >= 1e-6 for any
# vocabulary up to a million ids, so a top-p below MIN_TOP_P keeps that one token anyway, while one
# that rounds to 0 in float32 would drop it too and leave nothing to sample.
MIN_TEMPERATURE = 1e-6
MIN_TOP_P = 1e-6
SEED_RANGE = (-2**63, 2**64 - 1)  # what torch's generators take; seed s and s + 2**64 are the same


def check_temperature(value: float, name: str = "temperature") -> None:
    if not (value == 0.0 or value >= MIN_TEMPERATURE):  # also catches NaN
        raise UserError(f"{name} must be 0 (greedy) or at least {MIN_TEMPERATURE:g}, got {value}")


def check_top_p(value: float | None, name: str = "top-p") -> None:
    if value is not None and not MIN_TOP_P <= value <= 1.0:
        raise UserError(f"{name} must be in [{MIN_TOP_P:g}, 1], got {value}")


def check_seed(value: int | None, name: str = "seed") -> None:
    if value is not None and not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
        raise UserError(f"{name} must be an integer from -2**63 to 2**64 - 1, got {value}")


@dataclass(frozen=True)
class Sampling:
    """How a continuation is drawn: the one settings type of generation, the terminal chat, the
    server, fine-tuning's answers and the trainer's samples. Checked when made (UserError)."""

    max_new_tokens: int
    """New tokens at most."""
    temperature: float = 1.0
    """0 is greedy."""
    top_k: int | None = None
    """Sample only from the k most likely tokens."""
    top_p: float | None = None
    """Sample only from the smallest set of tokens with probability >= top_p."""
    seed: int | None = None
    """Seed of a private generator (the global RNG never moves); None: the global one."""
    stop_ids: frozenset[int] = field(default_factory=frozenset)
    """Tokens that end a continuation."""
    stop: tuple[str, ...] = ()
    """Strings that end a continuation's text (see TextPieces); they are not part of it."""

    def __post_init__(self):
        check_temperature(self.temperature)
        if self.top_k is not None and self.top_k < 1:
            raise UserError(f"top-k must be a positive integer, got {self.top_k}")
        check_top_p(self.top_p)
        check_seed(self.seed)
        if self.max_new_tokens < 0:
            raise UserError(f"max-new-tokens must be >= 0, got {self.max_new_tokens}")
        object.__setattr__(self, "stop_ids", frozenset(self.stop_ids))
        object.__setattr__(self, "stop", tuple(self.stop))
