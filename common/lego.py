"""LegoBlock, LegoMerge and LegoFuse (MM-Lego, Hemker et al., ICLR 2025), for N modalities.

Shapes use einops-style names: b = batch, n = tokens, w = encoder width, c = latent channels,
d = latent dimension. Every multimodal model takes ``dict[modality, input]``; an input is a
tensor or a dict of tensors passed to the encoder as keyword arguments, and a missing key or
``None`` means the modality is absent for that batch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedlego.common.aggregation import block_weights
from fedlego.common.layers import LatentUpdate, TaskHead
from fedlego.common.merging import merge_latents, merge_state_dicts
from fedlego.common.registry import Registry

ModalityInput = torch.Tensor | Mapping[str, torch.Tensor]
MultimodalInput = Mapping[str, ModalityInput | None]


@dataclass(frozen=True)
class LatentContract:
    """What every block of one federation shares, so that blocks can be merged and fused.

    ``seed`` fixes the initial latent array and task head of every block: blocks that start from
    the same point in weight space merge with less interference.
    """

    channels: int = 32
    dim: int = 32
    n_outputs: int = 1
    task: str = "survival"
    seed: int = 0

    def differences(self, other: LatentContract) -> list[str]:
        """Human-readable list of the fields where ``other`` differs from this contract."""
        mine, theirs = asdict(self), asdict(other)
        return [f"{k}: expected {mine[k]!r}, got {theirs[k]!r}" for k in mine if mine[k] != theirs[k]]


def _call_encoder(encoder: nn.Module, inputs: ModalityInput) -> torch.Tensor | tuple:
    if isinstance(inputs, Mapping):
        return encoder(**inputs)
    return encoder(inputs)


def pool_tokens(tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of the tokens (b, n, w) over n, over the valid ones when masked (0 for none)."""
    if mask is None:
        return tokens.mean(dim=1)
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def _batch_size(inputs: ModalityInput) -> int:
    if isinstance(inputs, Mapping):
        return next(iter(inputs.values())).shape[0]
    return inputs.shape[0]


class RawTokens(nn.Module):
    """Encoder-free mode: the raw input is used as tokens (a (b, f) input is one token)."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor | tuple:
        return x if mask is None else (x, mask)


class LegoBlock(nn.Module):
    """One modality's encoder plus the shared latent contract, trainable on that modality alone.

    The encoder may be any module; it returns tokens (b, n, w) or a single embedding (b, w),
    optionally with a token mask (b, n) as ``(tokens, mask)``. Its width w is found by running it
    on ``example_input``. A learned latent array (c, d) is refined over ``steps`` updates of
    cross-attention to the tokens plus feed-forward. With ``frequency=True`` (the method's
    default) each update L2-normalises the latent along c, Fourier-transforms it along c, updates
    the real part and carries the imaginary part; the inverse transform follows every update but
    the last, so the block's final latent is complex and frequency-domain. ``encoder=None`` runs
    attention directly on the raw input tokens. ``encoder_spec`` (see ``encoders.build_encoder``)
    lets the block travel as a package and be rebuilt elsewhere.

    With ``direct=True`` the block also holds the plain model of its modality: a linear head on
    the pooled encoder tokens whose output is added to the latent head's. The latent head starts
    at zero, so before any step the block *is* the encoder + linear head, and the latent path
    learns what that model misses. Merging averages the direct outputs of the present blocks
    with the merge weights (see ``LegoMerge``).
    """

    def __init__(
        self,
        modality: str,
        encoder: nn.Module | None,
        contract: LatentContract,
        example_input: ModalityInput,
        *,
        steps: int = 2,
        heads: int = 4,
        head_dim: int = 16,
        frequency: bool = True,
        dropout: float = 0.1,
        direct: bool = False,
        encoder_spec: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if steps < 1:
            raise ValueError("a LegoBlock needs at least one update step")
        self.modality = modality
        self.contract = contract
        self.frequency = frequency
        self.encoder = encoder if encoder is not None else RawTokens()
        self.encoder_free = encoder is None
        self.token_width = self._infer_width(example_input)
        self.encoder_spec = encoder_spec
        """How to rebuild the encoder from ``encoders.ENCODER_FACTORIES`` (None: not packable)."""
        self.hyperparameters = {
            "steps": steps,
            "heads": heads,
            "head_dim": head_dim,
            "frequency": frequency,
            "dropout": dropout,
            "direct": direct,
        }
        self.updates = nn.ModuleList(
            LatentUpdate(contract.dim, self.token_width, heads, head_dim, dropout) for _ in range(steps)
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(contract.seed)
            self.latent = nn.Parameter(torch.randn(contract.channels, contract.dim) * 0.02)
            self.head = TaskHead(contract.dim, contract.n_outputs)
        self.direct = nn.Linear(self.token_width, contract.n_outputs) if direct else None
        """The plain model's linear head on the pooled tokens (None: the method's latent head only)."""
        if direct:
            self.head.zero_output()
        self.n_samples = 0
        self.validation_score: float | None = None
        self.preprocessing: dict[str, Any] | None = None
        """State of the preprocessor fitted on this block's training patients (JSON-ready), so
        that prediction applies the same transform; see ``data.preprocess``."""
        self.frozen_encoder = False
        """The encoder never trains (pre-trained): only the latent array, updates and head do."""
        self.encoder_weights: str | None = None
        """SHA-256 of the encoder's weights file when they travel by reference (model store)."""

    def _infer_width(self, example_input: ModalityInput) -> int:
        was_training = self.encoder.training
        self.encoder.eval()
        with torch.no_grad():
            tokens, _ = self.tokens(example_input)
        self.encoder.train(was_training)
        return int(tokens.shape[-1])

    def tokens(self, inputs: ModalityInput) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the encoder: tokens (b, n, w) and an optional boolean token mask (b, n)."""
        out = _call_encoder(self.encoder, inputs)
        mask = None
        if isinstance(out, tuple):
            out, mask = out
        if out.dim() == 2:
            out = out.unsqueeze(1)
            mask = None
        if out.dim() != 3:
            raise ValueError(
                f"encoder of modality {self.modality!r} returned shape {tuple(out.shape)}; "
                "expected (batch, width) or (batch, tokens, width)"
            )
        return out, None if mask is None else mask.bool()

    def initial_latent(self, batch: int) -> torch.Tensor:
        """The learned latent array repeated over the batch (a view, the Parameter stays put)."""
        return self.latent.expand(batch, -1, -1)

    def apply_update(
        self, index: int, latent: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None, final: bool
    ) -> torch.Tensor:
        """Update ``index`` on a spatial latent; returns the frequency latent when ``final``."""
        update = self.updates[index]
        if not self.frequency:
            return update(latent, tokens, mask)
        spectrum = torch.fft.fft(F.normalize(latent, dim=1), dim=1)
        spectrum = torch.complex(update(spectrum.real, tokens, mask), spectrum.imag)
        return spectrum if final else torch.fft.ifft(spectrum, dim=1).real

    def refine(self, latent: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """All updates of this block, starting from a given spatial latent (b, c, d)."""
        last = len(self.updates) - 1
        for index in range(len(self.updates)):
            latent = self.apply_update(index, latent, tokens, mask, final=index == last)
        return latent

    def encode(self, inputs: ModalityInput) -> torch.Tensor:
        """The block's final latent (b, c, d): complex in frequency mode, real otherwise."""
        return self.encode_with_direct(inputs)[0]

    def encode_with_direct(self, inputs: ModalityInput) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The final latent and the direct head's output (None without a direct head), from one
        pass of the encoder."""
        tokens, mask = self.tokens(inputs)
        latent = self.refine(self.initial_latent(tokens.shape[0]), tokens, mask)
        direct = None if self.direct is None else self.direct(pool_tokens(tokens, mask))
        return latent, direct

    def forward(self, inputs: ModalityInput) -> torch.Tensor:
        latent, direct = self.encode_with_direct(inputs)
        output = self.head(latent)
        return output if direct is None else output + direct

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Parameters of the wrapped encoder (frozen by parameter-efficient fusion)."""
        return list(self.encoder.parameters())

    def freeze_encoder(self) -> LegoBlock:
        """Freeze the encoder for good: no gradient, always in eval mode (no dropout, no batch
        statistics), recorded in the block's package and honoured by every training step."""
        self.frozen_encoder = True
        self.encoder.requires_grad_(False)
        self.encoder.eval()
        return self

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The state without a frozen encoder's tensors (all of it when the encoder trains)."""
        state = self.state_dict()
        if not self.frozen_encoder:
            return state
        return {k: v for k, v in state.items() if not k.startswith("encoder.")}

    def train(self, mode: bool = True) -> LegoBlock:
        """Training mode, except a frozen encoder stays in eval mode."""
        super().train(mode)
        if self.frozen_encoder:
            self.encoder.eval()
        return self

    def describe(self) -> dict[str, Any]:
        """Architecture summary for manifests and reports."""
        return {
            "modality": self.modality,
            "encoder": "raw-tokens" if self.encoder_free else type(self.encoder).__name__,
            "token_width": self.token_width,
            "steps": len(self.updates),
            "frequency": self.frequency,
            "direct": self.direct is not None,
            "contract": asdict(self.contract),
            "n_samples": self.n_samples,
            "validation_score": self.validation_score,
            "preprocessing": self.preprocessing,
        }


def to_spatial(latent: torch.Tensor) -> torch.Tensor:
    """Back from a block's final (frequency) latent to the spatial domain along channels."""
    return torch.fft.ifft(latent, dim=1).real if latent.is_complex() else latent


def _as_block_dict(blocks: Mapping[str, LegoBlock] | Sequence[LegoBlock]) -> dict[str, LegoBlock]:
    items = dict(blocks) if isinstance(blocks, Mapping) else {b.modality: b for b in blocks}
    if not items:
        raise ValueError("need at least one LegoBlock")
    if not isinstance(blocks, Mapping) and len(items) != len(blocks):
        raise ValueError("two blocks share one modality name: merge them per modality first")
    first = next(iter(items.values()))
    for name, block in items.items():
        diff = first.contract.differences(block.contract)
        if diff:
            raise ValueError(f"block {name!r} breaks the latent contract: {'; '.join(diff)}")
        if block.frequency != first.frequency:
            raise ValueError(f"block {name!r} mixes frequency and spatial domains")
        if (block.direct is None) != (first.direct is None):
            raise ValueError(
                f"block {name!r} mixes blocks with and without a direct head (run-config key direct): "
                "their latent heads mean different things"
            )
    return dict(sorted(items.items()))


def add_direct(
    output: torch.Tensor, directs: Mapping[str, torch.Tensor | None], weights: Mapping[str, float]
) -> torch.Tensor:
    """``output`` plus the weighted mean of the present blocks' direct outputs (weights
    renormalised over the blocks that have one); ``output`` unchanged when none has."""
    held = {m: d for m, d in directs.items() if d is not None}
    if not held:
        return output
    total = sum(weights[m] for m in held)
    if total <= 0:
        return output + torch.stack(list(held.values())).mean(dim=0)
    return output + sum(weights[m] / total * d for m, d in held.items())


def merge_present(
    blocks: Mapping[str, LegoBlock],
    inputs: MultimodalInput,
    present: Sequence[str],
    latent_merge: str,
    weights: Mapping[str, float],
) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
    """The present blocks' final latents merged (``latent_merge``, ``weights``) and each block's
    direct output: what LegoMerge and ``merge``-mode LegoFuse compute before their head."""
    parts = {m: blocks[m].encode_with_direct(inputs[m]) for m in present}
    latent = merge_latents(latent_merge, [parts[m][0] for m in present], [weights[m] for m in present])
    return latent, {m: parts[m][1] for m in present}


def present_modalities(blocks: Mapping[str, nn.Module], inputs: MultimodalInput) -> list[str]:
    """Modalities with a block and a non-None input (inputs the model has no block for are
    ignored), or an error naming the accepted modalities if there are none."""
    present = [m for m in blocks if inputs.get(m) is not None]
    if not present:
        raise ValueError(
            f"none of the model's modalities {sorted(blocks)} is present in the input "
            f"(got {sorted(m for m, x in inputs.items() if x is not None)})"
        )
    return present


class LegoMerge(nn.Module):
    """N blocks merged without training: latents merged per input, task heads merged once.

    At inference only the present modalities' latents are merged (weights renormalised over
    them), so any non-empty subset of modalities works. Blocks with a direct head (the plain
    model inside the block) add the weighted mean of their direct outputs. One block merged alone
    is that block.
    """

    def __init__(
        self,
        blocks: Mapping[str, LegoBlock] | Sequence[LegoBlock],
        latent_merge: str = "harmonic",
        head_merge: str = "slerp",
        weighting: str | Mapping[str, float] = "uniform",
    ) -> None:
        super().__init__()
        items = _as_block_dict(blocks)
        self.blocks = nn.ModuleDict(items)
        self.latent_merge = latent_merge
        self.head_merge = head_merge
        self.weights = block_weights(items, weighting)
        first = next(iter(items.values()))
        self.contract = first.contract
        self.head = TaskHead(first.contract.dim, first.contract.n_outputs)
        merged = merge_state_dicts(
            head_merge, [b.head.state_dict() for b in items.values()], list(self.weights.values())
        )
        self.head.load_state_dict(merged)

    def encode(self, inputs: MultimodalInput) -> torch.Tensor:
        """Merged latent of the modalities present in ``inputs``."""
        return self._merged(inputs)[0]

    def _merged(self, inputs: MultimodalInput) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
        present = present_modalities(self.blocks, inputs)
        return merge_present(self.blocks, inputs, present, self.latent_merge, self.weights)

    def forward(self, inputs: MultimodalInput) -> torch.Tensor:
        latent, directs = self._merged(inputs)
        return add_direct(self.head(latent), directs, self.weights)


FuseTopology = Callable[["LegoFuse", MultimodalInput, list[str]], tuple[torch.Tensor, dict[str, torch.Tensor | None]]]
FUSE_MODES: Registry[FuseTopology] = Registry("fuse-mode")
"""LegoFuse topologies: ``merge`` (the merged model, fine-tuned; the default) and the authors'
``stack`` and ``weave`` (ablations). Each gives the fused latent of the present modalities (in
``order``) and their direct outputs."""


@FUSE_MODES.register("merge")
def _merge_topology(
    fuse: LegoFuse, inputs: MultimodalInput, present: list[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
    """Each block refines its own latent; the latents are combined as LegoMerge combines them."""
    return merge_present(fuse.blocks, inputs, present, fuse.latent_merge, fuse.weights)


def _shared_start(
    fuse: LegoFuse, inputs: MultimodalInput, present: list[str]
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor | None]], dict[str, torch.Tensor | None], torch.Tensor]:
    """Tokens and direct outputs of the present blocks, and the mean of their latent arrays."""
    tokens = {m: fuse.blocks[m].tokens(inputs[m]) for m in present}
    directs = {
        m: None if fuse.blocks[m].direct is None else fuse.blocks[m].direct(pool_tokens(*tokens[m])) for m in present
    }
    batch = next(iter(tokens.values()))[0].shape[0]
    state = torch.stack([fuse.blocks[m].latent for m in present]).mean(dim=0).expand(batch, -1, -1)
    return tokens, directs, state


@FUSE_MODES.register("stack")
def _stack_topology(
    fuse: LegoFuse, inputs: MultimodalInput, present: list[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
    """The latent state passes from block to block, each running all its updates."""
    tokens, directs, state = _shared_start(fuse, inputs, present)
    for position, m in enumerate(present):
        latent = fuse.blocks[m].refine(state, *tokens[m])
        if position < len(present) - 1:
            state = to_spatial(latent)
    return latent, directs


@FUSE_MODES.register("weave")
def _weave_topology(
    fuse: LegoFuse, inputs: MultimodalInput, present: list[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
    """Update step s of every block in turn, then step s + 1, on one shared state."""
    tokens, directs, state = _shared_start(fuse, inputs, present)
    schedule = [
        (step, m)
        for step in range(max(len(fuse.blocks[m].updates) for m in present))
        for m in present
        if step < len(fuse.blocks[m].updates)
    ]
    for position, (step, m) in enumerate(schedule):
        state = fuse.blocks[m].apply_update(step, state, *tokens[m], final=position == len(schedule) - 1)
    return state, directs


class LegoFuse(nn.Module):
    """Blocks fused for fine-tuning on paired data.

    - ``merge``: the merged model itself, made trainable: each present block refines its own
      latent array, the final latents are combined as LegoMerge combines them (``latent_merge``,
      the merge weights) and the merged head reads the result, so before any step its outputs are
      the merge's for every subset of modalities. The whole model stays in eval mode (no dropout
      in the fused layers) and ``anchor_penalty`` pulls the trainable weights toward the merged
      ones (instead of weight decay toward zero).
    - ``stack``: the latent state passes from block to block (in ``order``), each running all
      its updates from the previous block's output latent.
    - ``weave``: update step s of every block in turn, then step s + 1, on one shared state.

    Stack and weave start from the mean of the present blocks' latent arrays; the final latent of
    stack comes from the last block in ``order``. The blocks' own heads are frozen and unused: one
    fused head, initialised by merging them, reads the final latent.

    The blocks are copied (the merged model stays intact). With ``freeze_encoders`` only the
    fusion parameters (latents, attention, feed-forward, head) train: those are what a federation
    sends each round. Missing modalities are skipped.
    """

    def __init__(
        self,
        blocks: Mapping[str, LegoBlock] | Sequence[LegoBlock],
        mode: str = "merge",
        *,
        order: Sequence[str] | None = None,
        head_merge: str = "slerp",
        weighting: str | Mapping[str, float] = "uniform",
        latent_merge: str = "harmonic",
        freeze_encoders: bool = True,
        anchor: float = 0.0,
    ) -> None:
        super().__init__()
        self.topology = FUSE_MODES[mode]
        if anchor < 0:
            raise ValueError(f"the anchor penalty must be at least 0, got {anchor}")
        items = _as_block_dict(blocks)
        self.mode = mode
        self.order = list(order) if order is not None else list(items)
        if sorted(self.order) != sorted(items):
            raise ValueError(f"order {self.order} must list exactly the modalities {sorted(items)}")
        self.blocks = nn.ModuleDict({m: copy.deepcopy(b) for m, b in items.items()})
        self.contract = next(iter(items.values())).contract
        self.weights = block_weights(items, weighting)
        self.latent_merge = latent_merge
        self.head = TaskHead(self.contract.dim, self.contract.n_outputs)
        self.head.load_state_dict(
            merge_state_dicts(head_merge, [b.head.state_dict() for b in items.values()], list(self.weights.values()))
        )
        self.freeze_encoders = freeze_encoders
        for block in self.blocks.values():
            block.head.requires_grad_(False)  # replaced by the fused head
        if freeze_encoders:
            for block in self.blocks.values():
                for parameter in block.encoder_parameters():
                    parameter.requires_grad_(False)
        self.anchor = anchor
        self._anchor_state = (  # copied only when a penalty uses it (an unfrozen encoder is large)
            {n: p.detach().clone() for n, p in self.named_parameters() if p.requires_grad} if anchor > 0 else {}
        )

    def anchor_penalty(self) -> torch.Tensor:
        """``anchor / 2`` times the squared distance of the trainable weights from the ones the
        model was built with (the merge's, in ``merge`` mode); 0 without an anchor."""
        if self.anchor == 0:
            return torch.zeros(())
        distance = sum(
            ((p - self._anchor_state[n].to(p.device)) ** 2).sum() for n, p in self.named_parameters() if p.requires_grad
        )
        return 0.5 * self.anchor * distance

    def train(self, mode: bool = True) -> LegoFuse:
        """Training mode, except frozen encoders stay in eval mode (no dropout/batch stats); in
        ``merge`` mode every layer stays in eval mode (gradients still flow)."""
        super().train(mode and self.mode != "merge")
        for block in self.blocks.values():
            if self.freeze_encoders or block.frozen_encoder:
                block.encoder.eval()
        return self

    def _present_in_order(self, inputs: MultimodalInput) -> list[str]:
        present = set(present_modalities(self.blocks, inputs))
        return [m for m in self.order if m in present]

    def encode(self, inputs: MultimodalInput) -> torch.Tensor:
        """Fused latent of the modalities present in ``inputs``."""
        return self._fused(inputs)[0]

    def _fused(self, inputs: MultimodalInput) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
        return self.topology(self, inputs, self._present_in_order(inputs))

    def forward(self, inputs: MultimodalInput) -> torch.Tensor:
        latent, directs = self._fused(inputs)
        return add_direct(self.head(latent), directs, self.weights)

    def parameter_counts(self) -> dict[str, int]:
        """Trainable and total parameter counts."""
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {"trainable": trainable, "total": total}

    def fusion_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable parameters only: what federated fine-tuning exchanges each round."""
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.state_dict().items() if k in trainable}
