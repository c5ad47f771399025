"""The demo's scenarios as text: names, titles, narratives, chapters and the tour order.

Torch-free, so that the viewer (`gradtui demo --list`, the tour's side panel) never
imports torch; `gradtui.demo.scenarios` pairs each entry with the code that builds it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class ScenarioInfo:
    """A named training setup, described for people."""

    name: str
    title: str
    """Short, for a header."""
    blurb: str
    """One line, for `gradtui demo --list`."""
    narrative: str
    """A few short paragraphs for the side panel: what to look at, which key to press."""
    steps: int
    """Default number of steps."""
    watch_options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """Extra keyword arguments for `gradtui.watch(...)`, e.g. `{"clip": ("norm", 1.0)}`."""
    chapter: str = ""
    """Groups a failure with its cures in the demo ("vanishing", "exploding", ...)."""
    speed: float = 20.0
    """Steps per second the demo trains at (slower where the user must act in time)."""


_CLIP = MappingProxyType({"clip": ("norm", 1.0)})

_LIST: list[ScenarioInfo] = [
    ScenarioInfo(
        name="sigmoid",
        title="Vanishing: a sigmoid MLP with a tiny init",
        blurb="4 hidden sigmoid layers, normal(0, 0.05) init, two circles: the first layers get no gradient",
        narrative="Each sigmoid passes back at most a quarter of the gradient, and weights drawn with std 0.05 "
            "shrink it further: every layer toward the input sees about ten times less than the one above.\n\n"
            "Watch the heatmap: within a few dozen steps the rows of the first two layers get the vanishing "
            "flag (blue), while the loss sits at ln 2 = 0.69, a coin toss. Press s for the raw norms: the "
            "first layer's is more than a thousand times below the last one's.\n\n"
            "The cure is in the init and the activation: see the next chapters, sigmoid-relu-he and "
            "sigmoid-glorot.",
        steps=300,
        chapter="vanishing",
    ),
    ScenarioInfo(
        name="sigmoid-relu-he",
        title="Cure: ReLU with He init",
        blurb="The same MLP with ReLU and He init: gradients reach every layer",
        narrative="ReLU passes the gradient through unchanged where a unit is active, and He init scales the "
            "weights so that signals keep their size through depth.\n\n"
            "Every row of the heatmap stays calm (press s: the raw norms of all layers lie within a factor "
            "of ten or so), no flag is raised, and the loss falls as the net learns the two circles.",
        steps=300,
        chapter="vanishing",
    ),
    ScenarioInfo(
        name="sigmoid-glorot",
        title="Cure: sigmoid with Glorot init",
        blurb="The same sigmoid MLP with Glorot init: no vanishing at this depth",
        narrative="Keeping the sigmoid but scaling the initial weights by Glorot's rule keeps the gradient within "
            "a factor of about four per hidden layer (press s for the raw norms): the first layers are dimmer "
            "than the last, not dark.\n\n"
            "No flag: the gradient reaches every layer. Yet the loss stays near 0.69 for these 300 steps: "
            "saturating, off-centre sigmoids learn slowly even when the gradient gets through, which is why "
            "ReLU (sigmoid-relu-he) is the better cure.",
        steps=300,
        chapter="vanishing",
    ),
    ScenarioInfo(
        name="relu-explode",
        title="Exploding: plain SGD on raw regression targets",
        blurb="5 hidden ReLU layers, He-uniform init, plain SGD on unscaled targets: the run blows up",
        narrative="The targets are left unnormalised (their spread is about 16) and the learning rate warms up to "
            "0.02 over 30 steps. Past the stability limit each SGD step overshoots and makes the next "
            "gradient larger still: a burst or two, then the blow-up.\n\n"
            "Watch the global norm climb by orders of magnitude: the exploding flag comes up a few steps "
            "before the first NaN. Press c to clip the gradient norm, or - to halve the learning rate, "
            "before it is too late; relu-explode-clip shows the run clipped from the start.",
        steps=200,
        chapter="exploding",
        speed=4.0,
    ),
    ScenarioInfo(
        name="relu-explode-clip",
        title="Cure: clip the gradient norm to 1.0",
        blurb="The same run with the gradient norm clipped to 1.0: no NaN, the loss falls",
        narrative="Clipping rescales the whole gradient whenever its norm passes 1.0, so no step can overshoot by "
            "much. The raw norms (press s) are still large at first, since they are measured before "
            "clipping, but they settle as the loss falls.\n\n"
            "Press c to turn clipping off and watch the run blow up.",
        steps=200,
        watch_options=_CLIP,
        chapter="exploding",
    ),
    ScenarioInfo(
        name="relu-explode-guard",
        title="Cure without a hand on the keys: the guard",
        blurb="The run that blows up, watched with guard=True: it rolls itself back with a lower learning rate",
        narrative="The same run, watched with gradtui.watch(model, opt, guard=True), and nobody at the keys. The "
            "guard keeps a copy of the model and optimizer state in host memory, taken while no blow-up "
            "alarm is up.\n\n"
            "When the exploding flag stays critical for 3 steps, or a step turns NaN, it puts the last "
            "healthy copy back and cuts the learning rate to a quarter, on top of the warm-up the loop "
            "keeps setting. Each rollback is a line in the log (⟲, the step it went back to, the new "
            "learning rate) and an R on the charts. The run ends finite and its loss keeps falling.",
        steps=200,
        watch_options=MappingProxyType({"guard": True}),
        chapter="exploding",
        speed=4.0,
    ),
    ScenarioInfo(
        name="softplus-overflow",
        title="Where it broke: an overflow in the forward pass",
        blurb="The exploding net with a hand-written softplus: exp overflows in the forward pass, then every gradient",
        narrative="The same regression net as relu-explode, with one layer more before its output: a linear map "
            "and the textbook softplus, log(1 + exp(x)), in one module. In float32, exp overflows to Inf once "
            "x passes 88.7.\n\n"
            "As the run blows up the gradients grow large but stay finite, until one forward pass: the linear "
            "map's output passes 88.7, the layer's output is Inf, the loss goes non-finite, and at that step "
            "every row of the heatmap turns × at once. The gradients cannot say where it started; a capture "
            "can. Armed by the alarm (━ on the heatmap's axis; press d to ask for one), it checks each layer's "
            "output as it is made and names the first to go bad in the log: layer 8's forward output, Inf. "
            "Press s for what it measured: each layer's output, rms(a) and max|a|, over the capture's steps.\n\n"
            "The cure is in the formula: torch's own F.softplus returns x above 20 and never overflows. Then "
            "the learning rate, as in relu-explode.",
        steps=200,
        chapter="exploding",
        speed=4.0,
    ),
    ScenarioInfo(
        name="deep-linear",
        title="A 20-layer deep linear net with Adam",
        blurb="20 linear layers on the digits with Adam: products of many weights are unstable",
        narrative="Without nonlinearities the net is a product of 20 matrices. Adam moves every weight at the "
            "same pace whatever its gradient, and in a product of 20 factors small moves compound.\n\n"
            "Watch the global norm burst by orders of magnitude (the exploding flag, from the first steps) "
            "and the loss line spike. Press - early to halve the learning rate: smaller moves compound "
            "less, and the bursts stop. deep-linear-clip shows what clipping does here.",
        steps=300,
        chapter="exploding",
    ),
    ScenarioInfo(
        name="deep-linear-clip",
        title="The deep linear net, clipped",
        blurb="The same 20-layer linear net with the gradient norm clipped to 1.0",
        narrative="Clipping bounds each gradient before Adam sees it, and the loss no longer spikes. But the "
            "heatmap shows the gradients as backward made them, before clipping: they still jump far above "
            "their recent level and raise the exploding flag about as often as in deep-linear. Clipping "
            "bounds the step, not the gradient.\n\n"
            "The cure for the jumps themselves is a smaller learning rate (press -) or warm-up.",
        steps=300,
        watch_options=_CLIP,
        chapter="exploding",
    ),
    ScenarioInfo(
        name="residual-mlp",
        title="Healthy: a residual MLP with LayerNorm",
        blurb="Residual blocks with LayerNorm on the digits: the reference healthy run",
        narrative="Skip connections carry the gradient past every block, and LayerNorm keeps activations in range.\n\n"
            "This is what healthy looks like: every row of the heatmap calm, no layer flagged. Press s for the "
            "raw norms: every layer in one band, the whole band drifting down together as the loss goes to "
            "zero. Shrinking together is convergence, not vanishing.",
        steps=300,
        chapter="healthy",
    ),
    ScenarioInfo(
        name="cnn-bn",
        title="Healthy: a small CNN with BatchNorm",
        blurb="Two conv layers with BatchNorm on the 8x8 digits",
        narrative="A small convolutional net with BatchNorm after each convolution.\n\n"
            "The BatchNorm rows carry their own scale and shift parameters; their gradients move with the "
            "conv layers around them. No flag, and the loss goes to near zero.",
        steps=300,
        chapter="healthy",
    ),
    ScenarioInfo(
        name="lstm",
        title="Healthy: an LSTM on a short memory task",
        blurb="An LSTM recalls the first of 6 tokens",
        narrative="The LSTM's gates keep a memory cell through the sequence, so the gradient from the last step "
            "reaches the first token.\n\n"
            "Watch the loss fall to near zero with no flag on any row. The rows at the bottom, h[t=0] to "
            "h[t=5], are the gradient reaching the hidden state at each of the 6 time steps: the first "
            "token's is within a factor of ten or so of the last one's.",
        steps=300,
        chapter="healthy",
    ),
    ScenarioInfo(
        name="deep-sigmoid",
        title="Vanishing: 10 sigmoid layers of 256 with Adam",
        blurb="10 hidden sigmoid layers on the digits: depth alone starves the first layers",
        narrative="With PyTorch's default init and Adam, ten sigmoid layers still pass back too little gradient: "
            "each one divides it by four or more.\n\n"
            "Watch the first rows of the heatmap get the vanishing flag (blue) within a few dozen steps, "
            "while the loss stays near ln 10 = 2.3; press s for the raw norms, orders of magnitude below the "
            "last rows'. deep-sigmoid-cure shows the modern recipe.",
        steps=300,
        chapter="vanishing",
    ),
    ScenarioInfo(
        name="deep-sigmoid-cure",
        title="Cure: ReLU, Glorot, BatchNorm and skip connections",
        blurb="The deep net rebuilt as residual ReLU blocks with BatchNorm: every layer learns",
        narrative="ReLU, Glorot init, BatchNorm and residual connections each keep the gradient's size through "
            "depth; together they make depth cheap.\n\n"
            "Every row stays calm (press s: the raw norms lie within about two orders of magnitude, not "
            "nine), no flag is raised, and the loss falls fast.",
        steps=300,
        chapter="vanishing",
    ),
    ScenarioInfo(
        name="rnn-tanh",
        title="Vanishing through time: a tanh RNN",
        blurb="A vanilla tanh RNN must recall the first of 70 tokens: the gradient fades through time",
        narrative="The gradient from the answer has to travel back 70 time steps, through a tanh and the same "
            "recurrent matrix each time, and fades on the way: the loss stays near ln 4 = 1.39.\n\n"
            "The recurrent layer is a single row of the heatmap (its gradient is summed over time, so the "
            "recent steps dominate it). The rows below it, h[t=0] to h[t=69], are the gradient reaching "
            "the hidden state at each time step: press s for the raw norms, which fall by orders of "
            "magnitude from t=69 back to t=0. rnn-gru shows a gated cell, clipped, learning the same task.",
        steps=400,
        chapter="recurrent",
    ),
    ScenarioInfo(
        name="rnn-gru",
        title="Cure: a GRU that starts out remembering, clipped",
        blurb="The same 70-token task with a GRU, its update gate biased to keep state, clipped at 1.0",
        narrative="A GRU's update gate lets the hidden state pass through a time step unchanged, and biasing it "
            "toward 'keep' at init carries both the first token and its gradient across the 70 steps. "
            "Clipping at 1.0 guards against the bursts recurrent nets are known for.\n\n"
            "The rows h[t=0] to h[t=69] show the gradient reaching every time step, the first one too. "
            "Watch the loss sit at ln 4 for a while, then drop once the net finds the first token.",
        steps=400,
        watch_options=_CLIP,
        chapter="recurrent",
    ),
    ScenarioInfo(
        name="high-lr",
        title="A healthy CNN with far too high a learning rate",
        blurb="The BatchNorm CNN with SGD at lr 3.0: a burst of gradient, then a dead layer",
        narrative="The model is fine; the step is not. The first updates overshoot, the gradient bursts (exploding "
            "flag), and the loss stays at chance.\n\n"
            "Within a hundred steps the ReLUs after the convolutions stop firing for every input: the whole "
            "convolutional trunk gets an exactly-zero gradient, then the dead flag, and only the head still "
            "learns. Press - to halve the rate and watch: dead units do not come back, so the cure is a "
            "smaller rate from the start (cnn-bn).",
        steps=300,
        chapter="learning-rate",
        speed=8.0,
    ),
    ScenarioInfo(
        name="opt-sgd",
        title="Optimisers: plain SGD",
        blurb="A ReLU MLP on two moons with plain SGD (lr 0.05)",
        narrative="The baseline: each step moves along the gradient, no memory. Compare the loss curves of opt-*.",
        steps=300,
        chapter="optimisers",
    ),
    ScenarioInfo(
        name="opt-momentum",
        title="Optimisers: SGD with momentum",
        blurb="The same MLP with SGD and momentum 0.9",
        narrative="Momentum accumulates past gradients: faster along consistent directions, damped across noise.",
        steps=300,
        chapter="optimisers",
    ),
    ScenarioInfo(
        name="opt-adam",
        title="Optimisers: Adam",
        blurb="The same MLP with Adam (lr 1e-2)",
        narrative="Adam scales each parameter's step by its gradient's running size: every layer moves at one pace.",
        steps=300,
        chapter="optimisers",
    ),
    ScenarioInfo(
        name="opt-step-lr",
        title="Optimisers: momentum with step decay",
        blurb="SGD with momentum; the learning rate is divided by 10 every 100 steps",
        narrative="Watch the LR line step down and the loss settle lower after each drop.",
        steps=300,
        chapter="optimisers",
    ),
    ScenarioInfo(
        name="opt-exp-lr",
        title="Optimisers: momentum with exponential decay",
        blurb="SGD with momentum; the learning rate shrinks by 1% every step",
        narrative="A smooth decay: big steps early, fine ones late. Compare with opt-step-lr.",
        steps=300,
        chapter="optimisers",
    ),
]

CATALOG: dict[str, ScenarioInfo] = {s.name: s for s in _LIST}
"""Every scenario by name."""


def get_info(name: str) -> ScenarioInfo:
    """The scenario called `name`.

    Raises:
        ValueError: No scenario has that name; the message lists the valid names.
    """
    try:
        return CATALOG[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; valid names: {', '.join(CATALOG)}") from None


TOUR: tuple[str, ...] = (
    "sigmoid",
    "sigmoid-relu-he",
    "sigmoid-glorot",
    "relu-explode",
    "relu-explode-clip",
    "relu-explode-guard",
    "softplus-overflow",
    "deep-sigmoid",
    "deep-sigmoid-cure",
    "deep-linear",
    "deep-linear-clip",
    "rnn-tanh",
    "rnn-gru",
    "high-lr",
    "opt-sgd",
    "opt-momentum",
    "opt-adam",
    "opt-step-lr",
    "opt-exp-lr",
    "residual-mlp",
    "cnn-bn",
    "lstm",
)
"""The guided tour's chapters in order: each failure, then its cures; healthy runs last."""
