"""What the playground's "Read" panels say: the theory in the project's words, the formulas
in MathML (the browser renders them, no library), the reference code taken from the
library's own source, and interview-style questions with answers.

All text here is written by us (trusted markup); model text never passes through it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from alignkit.guard.kl_controllers import AdaptiveKLController
from alignkit.ops.advantages import gae, group_normalized_advantages, kl_penalized_rewards
from alignkit.ops.kl_estimators import kl_from_logits, kl_k1, kl_k3
from alignkit.ops.losses import dpo_loss, grpo_loss, ppo_policy_loss, ppo_value_loss
from alignkit.train.dpo import pair_logps
from alignkit.web.playground import exact, real_model


def _math(body: str) -> str:
    return f'<math display="block">{body}</math>'


SIGMA = "<mi>σ</mi>"
PI = "<msub><mi>π</mi><mi>θ</mi></msub>"
PI_REF = "<msub><mi>π</mi><mtext>ref</mtext></msub>"
YW, YL = "<msub><mi>y</mi><mi>w</mi></msub>", "<msub><mi>y</mi><mi>l</mi></msub>"


def _log_ratio(y: str) -> str:
    return (
        f"<mi>log</mi><mfrac><mrow>{PI}<mo>(</mo>{y}<mo>)</mo></mrow>"
        f"<mrow>{PI_REF}<mo>(</mo>{y}<mo>)</mo></mrow></mfrac>"
    )


FORMULAS: dict[str, str] = {
    "bradley_terry": _math(
        f"<mi>P</mi><mo>(</mo>{YW}<mo>≻</mo>{YL}<mo>|</mo><mi>x</mi><mo>)</mo><mo>=</mo>"
        f"{SIGMA}<mo>(</mo><mi>r</mi><mo>(</mo><mi>x</mi><mo>,</mo>{YW}<mo>)</mo><mo>−</mo>"
        f"<mi>r</mi><mo>(</mo><mi>x</mi><mo>,</mo>{YL}<mo>)</mo><mo>)</mo>"
    ),
    "objective": _math(
        f"<munder><mi>max</mi><msub><mi>π</mi><mi>θ</mi></msub></munder>"
        f"<msub><mi>𝔼</mi><mrow><mi>y</mi><mo>∼</mo>{PI}</mrow></msub>"
        f"<mo>[</mo><mi>r</mi><mo>(</mo><mi>x</mi><mo>,</mo><mi>y</mi><mo>)</mo><mo>]</mo>"
        f"<mo>−</mo><mi>β</mi><mspace width='0.2em'/><mi>KL</mi><mo>(</mo>{PI}<mo>‖</mo>"
        f"{PI_REF}<mo>)</mo>"
    ),
    "optimum": _math(
        f"<msup><mi>π</mi><mo>*</mo></msup><mo>(</mo><mi>y</mi><mo>|</mo><mi>x</mi><mo>)</mo>"
        f"<mo>=</mo><mfrac><mn>1</mn><mrow><mi>Z</mi><mo>(</mo><mi>x</mi><mo>)</mo></mrow>"
        f"</mfrac>{PI_REF}<mo>(</mo><mi>y</mi><mo>|</mo><mi>x</mi><mo>)</mo><mspace width='0.2em'/>"
        f"<mi>exp</mi><mo>(</mo><mfrac><mrow><mi>r</mi><mo>(</mo><mi>x</mi><mo>,</mo><mi>y</mi>"
        f"<mo>)</mo></mrow><mi>β</mi></mfrac><mo>)</mo>"
    ),
    "dpo": _math(
        f"<msub><mi>L</mi><mtext>DPO</mtext></msub><mo>=</mo><mo>−</mo><mi>log</mi>{SIGMA}"
        f"<mo>(</mo><mi>β</mi><mo>[</mo>{_log_ratio(YW)}<mo>−</mo>{_log_ratio(YL)}<mo>]</mo>"
        f"<mo>)</mo>"
    ),
    "ppo_clip": _math(
        "<msup><mi>L</mi><mtext>CLIP</mtext></msup><mo>=</mo><mo>−</mo><mi>𝔼</mi><mo>[</mo>"
        "<mi>min</mi><mo>(</mo><mi>ρ</mi><mi>A</mi><mo>,</mo><mspace width='0.2em'/>"
        "<mtext>clip</mtext><mo>(</mo><mi>ρ</mi><mo>,</mo><mn>1</mn><mo>−</mo><mi>ε</mi>"
        "<mo>,</mo><mn>1</mn><mo>+</mo><mi>ε</mi><mo>)</mo><mi>A</mi><mo>)</mo><mo>]</mo>"
        f"<mo>,</mo><mspace width='1em'/><mi>ρ</mi><mo>=</mo><mfrac><mrow>{PI}<mo>(</mo><mi>y</mi>"
        "<mo>)</mo></mrow><mrow><msub><mi>π</mi><mtext>old</mtext></msub><mo>(</mo><mi>y</mi>"
        "<mo>)</mo></mrow></mfrac>"
    ),
    "kl_reward": _math(
        "<msub><mi>r</mi><mi>t</mi></msub><mo>=</mo><mo>−</mo><mi>β</mi><mspace width='0.1em'/>"
        "<msub><mi>KL</mi><mi>t</mi></msub><mo>+</mo><mo>[</mo><mi>t</mi><mo>=</mo><mi>T</mi>"
        "<mo>]</mo><mspace width='0.1em'/><mi>r</mi><mo>(</mo><mi>x</mi><mo>,</mo><mi>y</mi>"
        "<mo>)</mo><mo>,</mo><mspace width='1em'/><mi>A</mi><mo>=</mo><mi>R</mi><mo>−</mo>"
        "<mi>V</mi><mo>(</mo><mi>s</mi><mo>)</mo>"
    ),
    "grpo": _math(
        "<msub><mover><mi>A</mi><mo>^</mo></mover><mi>i</mi></msub><mo>=</mo><mfrac><mrow>"
        "<msub><mi>r</mi><mi>i</mi></msub><mo>−</mo><mtext>mean</mtext><mo>(</mo>"
        "<msub><mi>r</mi><mn>1</mn></msub><mo>…</mo><msub><mi>r</mi><mi>G</mi></msub><mo>)</mo>"
        "</mrow><mrow><mtext>std</mtext><mo>(</mo><msub><mi>r</mi><mn>1</mn></msub><mo>…</mo>"
        "<msub><mi>r</mi><mi>G</mi></msub><mo>)</mo></mrow></mfrac>"
    ),
    "kl": _math(
        f"<mi>KL</mi><mo>(</mo>{PI}<mo>‖</mo>{PI_REF}<mo>)</mo><mo>=</mo><munder><mo>∑</mo>"
        f"<mi>y</mi></munder>{PI}<mo>(</mo><mi>y</mi><mo>)</mo><mspace width='0.1em'/>"
        f"{_log_ratio('<mi>y</mi>')}<mo>,</mo><mspace width='1em'/><msub><mi>k</mi><mn>3</mn>"
        "</msub><mo>=</mo><mi>q</mi><mo>−</mo><mn>1</mn><mo>−</mo><mi>log</mi><mi>q</mi><mo>,</mo>"
        f"<mspace width='0.4em'/><mi>q</mi><mo>=</mo><mfrac>{PI_REF}{PI}</mfrac>"
    ),
    "adaptive_beta": _math(
        "<mi>e</mi><mo>=</mo><mtext>clip</mtext><mo>(</mo><mfrac><mi>KL</mi><msub><mi>KL</mi>"
        "<mtext>target</mtext></msub></mfrac><mo>−</mo><mn>1</mn><mo>,</mo><mo>−</mo><mn>0.2</mn>"
        "<mo>,</mo><mn>0.2</mn><mo>)</mo><mo>,</mo><mspace width='1em'/><mi>β</mi><mo>←</mo>"
        "<mi>β</mi><mo>(</mo><mn>1</mn><mo>+</mo><mi>e</mi><mfrac><mi>n</mi><mi>H</mi></mfrac>"
        "<mo>)</mo>"
    ),
    "proxy": _math(
        "<msub><mi>r</mi><mtext>proxy</mtext></msub><mo>(</mo><mi>y</mi><mo>)</mo><mo>=</mo>"
        "<msub><mi>r</mi><mtext>gold</mtext></msub><mo>(</mo><mi>y</mi><mo>)</mo><mo>+</mo>"
        "<mtext>flaw</mtext><mo>·</mo><mfrac><mrow><mtext>words</mtext><mo>(</mo><mi>y</mi>"
        "<mo>)</mo></mrow><mtext>max words</mtext></mfrac>"
    ),
    "noisy_labels": _math(
        "<mi>P</mi><mo>(</mo><mtext>label says </mtext>" + YW + "<mo>≻</mo>" + YL + "<mo>)</mo>"
        "<mo>=</mo><mo>(</mo><mn>1</mn><mo>−</mo><mi>ε</mi><mo>)</mo>" + SIGMA + "<mo>(</mo>"
        "<mi>Δ</mi><mi>r</mi><mo>)</mo><mo>+</mo><mi>ε</mi><mspace width='0.1em'/>" + SIGMA + ""
        "<mo>(</mo><mo>−</mo><mi>Δ</mi><mi>r</mi><mo>)</mo>"
    ),
}


THEORY: tuple[tuple[str, str], ...] = (
    (
        "The three-stage pipeline",
        "<p>A pretrained model predicts <em>likely</em> text, not <em>helpful</em> text. "
        "Alignment closes the gap from human preferences, because for open-ended questions "
        "there is no single correct answer, but people can say which of two answers is "
        "better, cheaply and consistently.</p>"
        "<ol><li><b>Supervised fine-tuning (SFT)</b> on demonstrations gives a model that "
        "follows instructions: the reference policy π<sub>ref</sub>.</li>"
        "<li><b>A reward model</b> learns from pairs (x, y<sub>w</sub> ≻ y<sub>l</sub>) to "
        "score answers, by the Bradley–Terry likelihood:</li></ol>"
        + FORMULAS["bradley_terry"]
        + "<ol start='3'><li><b>Reinforcement learning</b> (PPO, GRPO) raises that score "
        "while a KL penalty keeps the policy near π<sub>ref</sub>:</li></ol>"
        + FORMULAS["objective"]
        + "<p>In the playground the reward model is the <em>proxy</em>; the <em>gold</em> "
        "reward is what a careful person would say, watched and never optimised.</p>",
    ),
    (
        "PPO and its four models",
        "<p>PPO-RLHF holds four models: the <b>policy</b> π<sub>θ</sub> that answers and "
        "is trained; the <b>critic</b> V<sub>φ</sub> that predicts the return, so the "
        "advantage A = R − V says how much better than expected an answer was; the frozen "
        "<b>reference</b> π<sub>ref</sub> for the KL penalty; and the frozen <b>reward "
        "model</b> r<sub>ψ</sub> that scores. The KL penalty enters the reward, token by "
        "token:</p>"
        + FORMULAS["kl_reward"]
        + "<p>and the policy follows the clipped surrogate, which stops any one batch from "
        "moving π<sub>θ</sub> far from the π<sub>old</sub> that sampled it:</p>"
        + FORMULAS["ppo_clip"]
        + "<p>Here the critic is a single number (there is one prompt), trained by the "
        "value loss ½(V − R)²; each batch is used for several epochs, so ρ leaves 1 and the "
        "clip starts to bite.</p>",
    ),
    (
        "DPO: no reward model, no RL loop",
        "<p>The KL-regularised objective has a closed-form optimum:</p>"
        + FORMULAS["optimum"]
        + "<p>Solve it for r and put it into the Bradley–Terry likelihood: Z(x) cancels, and "
        "what is left is a classification loss on the policy itself (Rafailov et al. "
        "2023):</p>"
        + FORMULAS["dpo"]
        + "<p>β·log π<sub>θ</sub>/π<sub>ref</sub> is DPO's <em>implicit reward</em>. Its "
        "gradient is scaled by β, so a small β learns slowly per step but wants a larger "
        "margin in the end. The playground samples its pairs from the current policy "
        "(online DPO) and the labels from an annotator with the proxy's taste.</p>",
    ),
    (
        "GRPO and user groups",
        "<p>GRPO (Shao et al. 2024) drops the critic: it samples G answers to the same prompt "
        "and uses the group as the baseline,</p>"
        + FORMULAS["grpo"]
        + "<p>with the clipped surrogate of PPO and the KL to π<sub>ref</sub> in the "
        "<em>loss</em> (the k3 estimator) rather than in the reward. Dividing by the group's "
        "spread makes the update ignore the reward's scale; a group whose answers all score "
        "the same teaches nothing.</p>"
        "<p><b>User groups</b> are another matter: people who want different things (a "
        "short answer, a step-by-step one). alignkit reports every figure per group with the "
        "gap between them, and GRPO's <code>segment_weighting</code> scales advantages "
        "toward a group that lags.</p>",
    ),
    (
        "The KL penalty and its control",
        "<p>The penalty measures how far the policy has moved from the reference:</p>"
        + FORMULAS["kl"]
        + "<p>Here the policy is a softmax over six answers, so the playground computes the "
        "KL exactly; a trainer estimates it from the sampled tokens (k1, k2, k3). Too small "
        "a β lets the policy leave the region where the reward model is right; too large "
        "and it cannot learn. The adaptive controller (Ziegler et al. 2019) moves β toward a "
        "target KL, by at most 20 % per horizon of H samples:</p>" + FORMULAS["adaptive_beta"],
    ),
    (
        "Reward hacking and its defences",
        "<p>The proxy here pays for length:</p>"
        + FORMULAS["proxy"]
        + "<p>With a flaw of 2.5 the padded answer scores highest on the proxy but is the "
        "second worst by gold. Press play at β = 0.05: the policy runs to it, the proxy "
        "climbs and gold falls — reward hacking. Raise β to 1, or turn on the adaptive "
        "controller, and reset: the KL penalty holds the policy near the reference, where the "
        "helpful answer keeps its share.</p>"
        "<p>The defences in alignkit: the KL penalty and its controller; shaping terms that "
        "charge for length, repetition and evasion; ensembles of reward models; a gold "
        "check watched beside the proxy; and the guard, which warns, stops or rolls back "
        "when the proxy rises while gold falls.</p>",
    ),
    (
        "Human-feedback quality",
        "<p>Labels are noisy and biased: a careless click, a preference for the longer or "
        "the first answer. With a flip rate ε the label the model learns from is</p>"
        + FORMULAS["noisy_labels"]
        + "<p>so noise pulls every preference toward a coin toss, and a bias (length!) "
        "becomes the model's. Raise the label-noise control with DPO to see the margin "
        "the policy can learn shrink. The remedies: several annotators per pair, agreement "
        "statistics (Cohen's and Fleiss' κ, Krippendorff's α), flagging annotators who "
        "disagree with the rest, and losses that expect noise (conservative and robust "
        "DPO).</p>",
    ),
)


QUESTIONS: tuple[tuple[str, str], ...] = (
    (
        "Why preferences instead of labelled correct answers?",
        "For open-ended generation there is no single correct answer, but people can say "
        "which of two answers is better, reliably and cheaply. Comparisons are more "
        "consistent than written gold answers and capture tone, helpfulness and safety.",
    ),
    (
        "RLHF or DPO: when would you use each?",
        "RLHF trains a reward model, then PPO against it: flexible (any reward, shaping, "
        "on-policy samples) but four models and many knobs. DPO optimises the policy on the "
        "pairs directly, with the same optimum, no reward model and no sampling loop: simpler "
        "and more stable, but it learns only from the pairs it has.",
    ),
    (
        "What does the KL penalty do, and how do you choose β?",
        "It keeps the policy near the reference, where the reward model was trained and "
        "its scores still mean something, and it keeps the policy from collapsing onto one "
        "answer. Too small a β and the policy hacks the reward; too large and it cannot "
        "learn. Watch KL; or set a target KL and let the adaptive controller move β.",
    ),
    (
        "What is reward hacking, and how do you catch it?",
        "The policy finds what the proxy over-pays for — length, flattery, refusals — and "
        "its score rises while real quality falls. Catch it by watching a gold check (human "
        "or rule-based) beside the proxy, the KL, response length and repetition; prevent it "
        "with the KL penalty, shaping, ensembles and a better reward model.",
    ),
    (
        "Why does PPO clip the ratio?",
        "A batch sampled by π_old says little about answers far from π_old. Clipping "
        "ρ = π_θ/π_old to [1 − ε, 1 + ε] removes the gradient once the policy has moved "
        "that far on a sample, so several epochs on one batch cannot run away.",
    ),
    (
        "How does GRPO get away without a critic?",
        "It samples several answers to the same prompt and uses their mean score as the "
        "baseline, dividing by their spread; the critic's job (what score to expect here) "
        "is done by the group. It costs more samples per prompt and saves a whole model.",
    ),
    (
        "What is the difference between the reward model's loss and DPO's?",
        "Both are the Bradley–Terry likelihood of the labels. The reward model learns a "
        "score r(x, y); DPO writes r as β·log π_θ/π_ref and learns the policy itself.",
    ),
    (
        "What happens with noisy labels?",
        "Each flip pulls a preference toward 50/50, so the learnable margin shrinks; a "
        "systematic bias becomes the model's taste. Use several annotators, measure their "
        "agreement, drop or down-weight the ones who disagree, and consider conservative "
        "(label-smoothed) or robust DPO.",
    ),
)


# ----------------------------------------------------------------------------- code

CODE: dict[str, tuple[Callable[..., Any] | type, ...]] = {
    "dpo": (exact.dpo_step, dpo_loss, exact.step, exact.exact_kl, kl_from_logits),
    "ppo": (
        exact.ppo_step,
        kl_k1,
        kl_penalized_rewards,
        gae,
        ppo_policy_loss,
        ppo_value_loss,
        exact.step,
        AdaptiveKLController,
    ),
    "grpo": (
        exact.grpo_step,
        group_normalized_advantages,
        grpo_loss,
        kl_k3,
        exact.step,
        AdaptiveKLController,
    ),
    "real": (real_model.RealModelSession.prefer, pair_logps, dpo_loss),
}


def source_of(obj: Callable[..., Any] | type) -> dict[str, str]:
    """The function's (or class's) own source text, so the panel cannot drift from it."""
    return {
        "name": obj.__qualname__,
        "module": obj.__module__,
        "source": inspect.getsource(obj),
    }


def code_for(method: str) -> list[dict[str, str]]:
    if method not in CODE:
        raise KeyError(method)
    return [source_of(obj) for obj in CODE[method]]
