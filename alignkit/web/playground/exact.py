"""The playground's exact world: one prompt, a handful of answers, a policy that is a softmax
over them, and one step of DPO, PPO or GRPO computed by alignkit's own functions.

The policy is a logits vector θ ∈ R^K over K candidate answers, π_θ = softmax(θ); the
reference is the same softmax at the starting logits. Because every "response" is one
choice, a response is one token: its sequence log-probability is the log-softmax entry
log π_θ(y), and every per-token tensor of `alignkit.ops` is [B, 1] with a mask of ones.

Two rewards judge the answers: the gold reward (what a careful person wants) and a flawed
proxy (a reward model that also pays for length):

    r_proxy(y) = r_gold(y) + flaw · words(y) / max_words

The policy is trained on the proxy only; gold is watched. With a small β the policy runs
to the padded answer (proxy up, gold down); the KL penalty β·KL(π_θ ‖ π_ref) holds it back.

The update is autograd through the library's loss and one plain SGD step θ ← θ − lr·∇θ L,
so the server needs no optimizer state: the whole state travels with each request.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch

from alignkit.guard.kl_controllers import AdaptiveKLController, FixedKLController
from alignkit.ops.advantages import gae, group_normalized_advantages, kl_penalized_rewards
from alignkit.ops.kl_estimators import kl_from_logits, kl_k1
from alignkit.ops.losses import dpo_loss, grpo_loss, ppo_policy_loss, ppo_value_loss

Method = Literal["dpo", "ppo", "grpo"]
METHODS: tuple[str, ...] = ("dpo", "ppo", "grpo")

PROMPT = "Explain photosynthesis to a five-year-old."


@dataclass(frozen=True)
class Answer:
    """One candidate answer: its text, visible traits, gold reward and the base model's
    probability of saying it."""

    key: str
    text: str
    traits: tuple[str, ...]
    gold: float
    reference_prob: float

    @property
    def words(self) -> int:
        return len(self.text.split())


ANSWERS: tuple[Answer, ...] = (
    Answer(
        "helpful",
        "Plants are like little chefs. Their leaves catch sunlight and use it to turn "
        "water and air into sugar, their food. That is why they need the sun.",
        ("helpful", "clear", "short"),
        1.0,
        0.20,
    ),
    Answer(
        "jargon",
        "Photosynthesis is the light-dependent synthesis of glucose: chlorophyll absorbs "
        "photons, the thylakoid membranes produce ATP and NADPH, and the Calvin cycle "
        "fixes CO2.",
        ("correct", "jargon", "not for a child"),
        0.1,
        0.25,
    ),
    Answer(
        "padded",
        "What a great question, thank you so much for asking it! Photosynthesis is a very, "
        "very important thing, and it is important to understand it, because it is "
        "important. Plants use sunlight. Let me say that again so it is really clear: "
        "plants use sunlight, the light from the sun, sunlight. In summary, to sum up, "
        "and in conclusion, plants use sunlight, which is light that comes from the sun, "
        "as I said, and that is the answer, I hope it helps, let me know if you want more!",
        ("padded", "long", "repetitive"),
        -0.4,
        0.10,
    ),
    Answer(
        "evasive",
        "I'm not able to explain that. Please ask a teacher.",
        ("evasive", "short"),
        -0.6,
        0.20,
    ),
    Answer(
        "flattering",
        "Wow, what a brilliant and clever question, you must be the smartest child ever! "
        "Plants use the sun, and you are as bright as the sun.",
        ("sycophantic", "vague"),
        -0.2,
        0.15,
    ),
    Answer(
        "wrong",
        "Plants eat dirt through their roots, and that is how they grow.",
        ("wrong", "short"),
        -1.0,
        0.10,
    ),
)

MAX_WORDS = max(answer.words for answer in ANSWERS)

# The learning rates each method is offered (the page's slider) and accepts. PPO's critic
# takes plain gradient steps on ½(V − R)²: V ← V − lr·(V − R), which overshoots R and grows
# without bound once lr > 2, so PPO stops below that; DPO and GRPO converge across these.
LEARNING_RATES: dict[str, tuple[float, float]] = {
    "dpo": (0.05, 20.0),
    "ppo": (0.05, 1.5),
    "grpo": (0.05, 20.0),
}


class Diverged(ValueError):
    """A run whose state stopped being finite; ``results`` are its steps up to the last
    finite one."""

    def __init__(self, message: str, results: list[StepResult]):
        super().__init__(message)
        self.results = results


@dataclass
class Settings:
    """The controls. A change takes effect at the next step."""

    method: Method = "ppo"
    beta: float = 0.1  # β: the KL coefficient (DPO: the implicit KL constraint)
    learning_rate: float = 0.5
    clip_eps: float = 0.2  # PPO/GRPO clip ε
    adaptive_beta: bool = False
    kl_target: float = 0.3  # nats: the adaptive controller's target KL(π_θ ‖ π_ref)
    kl_horizon: int = 50  # samples: how fast the controller moves β
    group_size: int = 4  # GRPO's G
    batch_size: int = 8  # PPO: samples per step; DPO: pairs per step
    ppo_epochs: int = 4  # PPO: updates on each batch (where the clip starts to matter)
    label_noise: float = 0.0  # probability that a preference label is flipped
    proxy_flaw: float = 2.5  # how much the proxy pays for length
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (self.method in METHODS, f"method must be one of {', '.join(METHODS)}"),
            (0 < self.beta <= 100, "beta must be in (0, 100]"),
            (
                0 < self.learning_rate <= LEARNING_RATES.get(self.method, (0, 0))[1],
                f"learning_rate for {self.method} must be in "
                f"(0, {LEARNING_RATES.get(self.method, (0, 0))[1]:g}]",
            ),
            (0 < self.clip_eps < 1, "clip_eps must be in (0, 1)"),
            (0 < self.kl_target <= 100, "kl_target must be in (0, 100]"),
            (1 <= self.kl_horizon <= 1_000_000, "kl_horizon must be in [1, 1e6]"),
            (2 <= self.group_size <= 64, "group_size must be in [2, 64]"),
            (1 <= self.batch_size <= 256, "batch_size must be in [1, 256]"),
            (1 <= self.ppo_epochs <= 32, "ppo_epochs must be in [1, 32]"),
            (0 <= self.label_noise <= 0.5, "label_noise must be in [0, 0.5]"),
            (0 <= self.proxy_flaw <= 10, "proxy_flaw must be in [0, 10]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass
class State:
    """Everything that changes from step to step: θ, the critic's V, the current β."""

    logits: list[float]
    value: float = 0.0  # PPO's critic: V(prompt), one number for the one prompt
    beta: float | None = None  # the controller's β now (None: start from the settings')
    step: int = 0

    def tensor(self) -> torch.Tensor:
        if len(self.logits) != len(ANSWERS):
            raise ValueError(f"logits must have {len(ANSWERS)} entries, got {len(self.logits)}")
        logits = torch.tensor(self.logits, dtype=torch.float64)
        if not torch.isfinite(logits).all():
            raise ValueError("logits must be finite")
        return logits


def reference_logits() -> torch.Tensor:
    """θ_ref = log π_ref: the base model's preferences over the answers."""
    return torch.tensor([a.reference_prob for a in ANSWERS], dtype=torch.float64).log()


def initial_state() -> State:
    return State(logits=reference_logits().tolist())


def gold_rewards() -> torch.Tensor:
    return torch.tensor([a.gold for a in ANSWERS], dtype=torch.float64)


def proxy_rewards(flaw: float) -> torch.Tensor:
    """r_proxy = r_gold + flaw · words / max_words: a reward model that also pays for length."""
    words = torch.tensor([a.words for a in ANSWERS], dtype=torch.float64)
    return gold_rewards() + flaw * words / MAX_WORDS


def exact_kl(logits: torch.Tensor, ref_logits: torch.Tensor) -> float:
    """KL(π_θ ‖ π_ref) = Σ_y π_θ(y) (log π_θ(y) − log π_ref(y)), exactly (K terms)."""
    return float(kl_from_logits(logits.unsqueeze(0), ref_logits.unsqueeze(0))[0])


def _generator(settings: Settings, step: int) -> torch.Generator:
    # The same seed and step draw the same samples whatever else changed, so two settings
    # can be compared on the same luck.
    return torch.Generator().manual_seed(settings.seed * 1_000_003 + step)


def _ones(rows: int) -> torch.Tensor:
    return torch.ones(rows, 1, dtype=torch.bool)


# ------------------------------------------------------------------------------ the steps


def dpo_step(
    logits: torch.Tensor, settings: Settings, beta: float, gen: torch.Generator
) -> tuple[torch.Tensor, dict[str, Any]]:
    """``batch_size`` pairs of two different answers from π_θ; for each, an annotator with the proxy's taste picks one by
    Bradley–Terry, P(a ≻ b) = σ(r_a − r_b), and the label is flipped with probability
    label_noise; one SGD step on the DPO loss (``ops.losses.dpo_loss``):

        L = −log σ(β[(log π_θ(y_w) − log π_ref(y_w)) − (log π_θ(y_l) − log π_ref(y_l))])

    Its fixed point is π* ∝ π_ref · exp(r/β), the same optimum as PPO's E[r] − β·KL.
    """
    ref = reference_logits()
    probs = torch.softmax(logits, -1)
    proxy = proxy_rewards(settings.proxy_flaw)
    pairs = [
        torch.multinomial(probs, 2, replacement=False, generator=gen).tolist()
        for _ in range(settings.batch_size)
    ]
    # The annotator (the proxy's judgement) follows Bradley–Terry: P(a ≻ b) = σ(r_a − r_b);
    # then label noise, a careless click, flips the label.
    draws = torch.rand(len(pairs), 2, generator=gen, dtype=torch.float64).tolist()
    winners, losers, flips = [], [], []
    for (first, second), (u_pick, u_flip) in zip(pairs, draws, strict=True):
        p_first = float(torch.sigmoid(proxy[first] - proxy[second]))
        winner, loser = (first, second) if u_pick < p_first else (second, first)
        flipped = u_flip < settings.label_noise
        winners.append(loser if flipped else winner)
        losers.append(winner if flipped else loser)
        flips.append(flipped)
    theta = logits.clone().requires_grad_(True)
    logp, ref_logp = torch.log_softmax(theta, -1), torch.log_softmax(ref, -1)
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        logp[winners], logp[losers], ref_logp[winners], ref_logp[losers], beta=beta
    )
    loss = losses.mean()
    loss.backward()
    new_logits = (theta - settings.learning_rate * theta.grad).detach()
    return new_logits, {
        "samples": [index for pair in zip(winners, losers, strict=True) for index in pair],
        "pairs": [[w, lo] for w, lo in zip(winners, losers, strict=True)],
        "chosen": winners[0],
        "rejected": losers[0],
        "flipped": flips,
        "loss": float(loss.detach()),
        "implicit_rewards": [chosen_rewards.tolist(), rejected_rewards.tolist()],
        "gradient": theta.grad.tolist(),
    }


def ppo_step(
    logits: torch.Tensor, value: float, settings: Settings, beta: float, gen: torch.Generator
) -> tuple[torch.Tensor, float, dict[str, Any]]:
    """A batch from π_old = π_θ, scored by the proxy; per-sample reward r − β·KL
    (``kl_penalized_rewards`` with k1 = log π_old − log π_ref); advantage A = R − V by
    ``gae`` (one token, γ = λ = 1); then ``ppo_epochs`` SGD steps on the clipped loss
    (``ppo_policy_loss``) and on the critic's value loss (``ppo_value_loss``):

        L^CLIP = −E[min(ρA, clip(ρ, 1 − ε, 1 + ε)A)],  ρ = π_θ(y)/π_old(y)
    """
    ref_logp = torch.log_softmax(reference_logits(), -1)
    old_logp_all = torch.log_softmax(logits, -1)
    samples = torch.multinomial(
        old_logp_all.exp(), settings.batch_size, replacement=True, generator=gen
    )
    mask = _ones(len(samples))
    old_logp = old_logp_all[samples].unsqueeze(1)
    kl = kl_k1(old_logp, ref_logp[samples].unsqueeze(1))
    scores = proxy_rewards(settings.proxy_flaw)[samples]
    rewards = kl_penalized_rewards(scores, kl, mask, beta)
    values = torch.full_like(old_logp, value)
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)

    theta = logits.clone().requires_grad_(True)
    v = torch.tensor(value, dtype=torch.float64, requires_grad=True)
    clipfracs = []
    for _ in range(settings.ppo_epochs):
        logp = torch.log_softmax(theta, -1)[samples].unsqueeze(1)
        policy_loss, stats = ppo_policy_loss(
            logp, old_logp, advantages, mask, clip_eps=settings.clip_eps
        )
        value_loss, _ = ppo_value_loss(
            v.expand_as(old_logp), values, returns, mask, clip_range=None
        )
        theta.grad, v.grad = None, None
        (policy_loss + value_loss).backward()
        with torch.no_grad():
            theta -= settings.learning_rate * theta.grad
            v -= settings.learning_rate * v.grad
        clipfracs.append(float(stats["clipfrac"]))
    return (
        theta.detach(),
        float(v.detach()),
        {
            "samples": samples.tolist(),
            "scores": scores.tolist(),
            "kl": kl.squeeze(1).tolist(),
            "rewards": rewards.squeeze(1).tolist(),
            "advantages": advantages.squeeze(1).tolist(),
            "loss": float(policy_loss.detach()),
            "value_loss": float(value_loss.detach()),
            "clipfrac": clipfracs[-1],
        },
    )


def grpo_step(
    logits: torch.Tensor, settings: Settings, beta: float, gen: torch.Generator
) -> tuple[torch.Tensor, dict[str, Any]]:
    """G answers from π_θ, scored by the proxy; advantages relative to the group
    (``group_normalized_advantages``), Â_i = (r_i − mean r)/(std r + ε); one SGD step on
    ``grpo_loss``: the clipped surrogate plus β·k3 KL to π_ref in the loss (not the reward).
    """
    ref_logp = torch.log_softmax(reference_logits(), -1)
    probs = torch.softmax(logits, -1)
    samples = torch.multinomial(probs, settings.group_size, replacement=True, generator=gen)
    scores = proxy_rewards(settings.proxy_flaw)[samples]
    advantages = group_normalized_advantages(scores, settings.group_size)
    theta = logits.clone().requires_grad_(True)
    logp = torch.log_softmax(theta, -1)[samples].unsqueeze(1)
    loss, stats = grpo_loss(
        logp,
        None,
        ref_logp[samples].unsqueeze(1),
        advantages,
        _ones(len(samples)),
        clip_eps=settings.clip_eps,
        beta=beta,
    )
    loss.backward()
    new_logits = (theta - settings.learning_rate * theta.grad).detach()
    return new_logits, {
        "samples": samples.tolist(),
        "scores": scores.tolist(),
        "advantages": advantages.tolist(),
        "loss": float(loss.detach()),
        "kl_in_loss": float(stats["kl"]),
        "gradient": theta.grad.tolist(),
    }


def kl_controller(settings: Settings, beta_now: float) -> FixedKLController:
    """Fixed β, or Ziegler et al.'s adaptive controller picking up from the β reached."""
    if settings.adaptive_beta:
        return AdaptiveKLController(beta_now, settings.kl_target, settings.kl_horizon)
    return FixedKLController(settings.beta)


def samples_per_step(settings: Settings) -> int:
    return {
        "dpo": 2 * settings.batch_size,
        "ppo": settings.batch_size,
        "grpo": settings.group_size,
    }[settings.method]


# ------------------------------------------------------------------------------ one step


@dataclass
class StepResult:
    state: State
    trace: dict[str, Any]  # what this step sampled, scored and computed, for the animation
    metrics: dict[str, Any] = field(default_factory=dict)  # after the step

    def to_dict(self) -> dict[str, Any]:
        return {"state": asdict(self.state), "trace": self.trace, "metrics": self.metrics}


def measure(logits: torch.Tensor, settings: Settings, beta: float, step: int) -> dict[str, Any]:
    """The figures the charts draw: π_θ, expected proxy and gold reward, exact KL, β."""
    probs = torch.softmax(logits, -1)
    return {
        "step": step,
        "probs": probs.tolist(),
        "proxy": float((probs * proxy_rewards(settings.proxy_flaw)).sum()),
        "gold": float((probs * gold_rewards()).sum()),
        "kl": exact_kl(logits, reference_logits()),
        "beta": beta,
    }


def step(state: State, settings: Settings) -> StepResult:
    """One step of the chosen method from ``state``; β is the controller's, updated after
    the step from the exact KL (n = the samples the step used)."""
    logits = state.tensor()
    beta = settings.beta if state.beta is None or not settings.adaptive_beta else state.beta
    gen = _generator(settings, state.step)
    value = state.value
    probs_before = torch.softmax(logits, -1).tolist()
    if settings.method == "dpo":
        new_logits, trace = dpo_step(logits, settings, beta, gen)
    elif settings.method == "ppo":
        new_logits, value, trace = ppo_step(logits, state.value, settings, beta, gen)
    else:
        new_logits, trace = grpo_step(logits, settings, beta, gen)
    logp = torch.log_softmax(new_logits, -1)
    chosen, rejected = _chosen_and_rejected(trace)
    kl = exact_kl(new_logits, reference_logits())
    next_beta = kl_controller(settings, beta).update(kl, samples_per_step(settings))
    trace |= {
        "method": settings.method,
        "beta_used": beta,
        "probs_before": probs_before,
        "chosen": chosen,
        "rejected": rejected,
        "logp_chosen": float(logp[chosen]),
        "logp_rejected": float(logp[rejected]),
    }
    new_state = State(new_logits.tolist(), value, next_beta, state.step + 1)
    return StepResult(new_state, trace, measure(new_logits, settings, next_beta, state.step + 1))


def _chosen_and_rejected(trace: dict[str, Any]) -> tuple[int, int]:
    """DPO: the pair's winner and loser; PPO/GRPO: the best and worst sample by advantage."""
    if "chosen" in trace:
        return trace["chosen"], trace["rejected"]
    ranked = sorted(zip(trace["advantages"], trace["samples"], strict=True))
    return ranked[-1][1], ranked[0][1]


# No converging run comes near: the rewards are a few units, so V stays within them, and
# θ only grows as log-probabilities of answers the policy has given up on.
BLOWN_UP = 1e6


def _finite(state: State) -> bool:
    return all(math.isfinite(x) and abs(x) < BLOWN_UP for x in [*state.logits, state.value])


def run(state: State, settings: Settings, steps: int) -> list[StepResult]:
    """``steps`` steps in a row (the page's fast-forward). A step whose θ or V is no longer
    finite ends the run: `Diverged`, holding the steps before it."""
    results: list[StepResult] = []
    for _ in range(steps):
        result = step(state, settings)
        if not _finite(result.state):
            raise Diverged(
                f"{settings.method.upper()} diverged at step {state.step + 1} (θ or the "
                f"critic's value grew past ±{BLOWN_UP:,.0f}): lower the learning rate "
                f"({settings.learning_rate:g}) and reset",
                results,
            )
        results.append(result)
        state = result.state
    return results


def world(settings: Settings) -> dict[str, Any]:
    """What the page draws before any step: the prompt, the answers and their rewards."""
    proxy = proxy_rewards(settings.proxy_flaw)
    state = initial_state()
    return {
        "prompt": PROMPT,
        "answers": [
            {
                "key": a.key,
                "text": a.text,
                "traits": list(a.traits),
                "words": a.words,
                "gold": a.gold,
                "proxy": float(proxy[i]),
                "reference_prob": a.reference_prob,
            }
            for i, a in enumerate(ANSWERS)
        ],
        "state": asdict(state),
        "metrics": measure(state.tensor(), settings, settings.beta, 0),
    }
