"""In-encoder pruning: drop patch tokens inside a vision transformer after block ``L``.

The blocks after the pruning point then run on fewer tokens, so embedding an
image gets faster. The family adapters (:mod:`prunekit.adapters.hf_encoders`,
:mod:`~prunekit.adapters.timm_vit`, :mod:`~prunekit.adapters.open_clip_vit`)
only say where the blocks, the prefix tokens and the joint text space are;
this module does the rest.

Convention for ``layer``: ``layer=L`` means *after the L-th block*. Blocks
``0 .. L-1`` (0-based) run on every token, the input of block ``L`` is pruned,
and blocks ``L .. n-1`` run on the kept tokens. Valid values are
``0 <= L <= n - 1`` (``n`` the encoder's number of blocks): ``layer=0`` prunes
the patch embeddings before any block, ``layer=n-1`` leaves one block to run
short. ``layer=6`` on a 12-block ViT-S/B: six blocks at full length, six pruned.

Mechanism: a forward *pre*-hook on the instance's block ``L`` replaces the
block's input hidden states ``(B, p + P, D)`` by the prefix tokens followed by
the kept patch tokens (in their original order), and forward pre-hooks on the
later blocks subset any attention mask they receive (``(B, N)`` key masks and
``(B or 1, ..., N, N)`` masks; the model's own masks are sized to the
original token count). A pre-hook on block ``L`` rather than a forward hook on
block ``L - 1`` allows ``layer=0`` and keeps the hidden states that
transformers records with ``output_hidden_states`` independent of the order
in which hooks were installed: ``hidden_states[i]`` (the output of block
``i - 1``) has every token for ``1 <= i <= L`` and the kept tokens after
(``hidden_states[0]``, recorded as the input of block 0, is the pruned one
when ``layer=0``).
``install`` returns the hook removers; nothing else of the model is changed
(timm and open_clip towers also get an instance-level guard on
``forward_intermediates``, see below).

Prefix tokens ([CLS], register tokens, a distillation token) are always kept
and do not count towards the budget: an int budget is the number of *patch*
tokens kept, a float budget the fraction of patch tokens kept. The pruner sees
only the patch tokens.

Text conditioning (``texts=`` with ``tokenizer=``, or ``text_embeds=``) needs a
joint image-text space. The intermediate patch tokens at block ``L`` are mapped
through the model's *own* output head, i.e. the final norm and projection that
turn the last hidden state into the image embedding (CLIP: ``post_layernorm``
then ``visual_projection``; SigLIP: ``post_layernorm``, SigLIP has no
projection; open_clip: ``ln_post`` then ``proj``), and *those* are the tokens
given to the pruner together with the text embeddings, so relevance and
selection both run in the joint space. This is an approximation (the head was
trained on last-layer states, not on layer-``L`` states), the same one
training-free methods make when they read a CLIP head at an intermediate layer;
the kept tokens themselves stay the raw hidden states. Without text the pruner
gets the raw hidden states. ``text_embeds`` of shape ``(M, D_joint)`` is shared
by every image of a batch; ``(B, M, D_joint)`` gives each image its own rows.
Text options on a model without a joint space (DINOv2, timm ViTs, a CLIP vision
tower without projection) raise ``ValueError``.

A pruner that requires the signal ``joint_text_cosine`` (the relevance
``clip_text``, :class:`~prunekit.strategies.relevance.clip_text.ClipTextRelevance`)
gets the other split, CDPruner's: its tokens are the *raw* patch hidden states
(so its selection runs on what the model keeps) and no ``text_embeds``; the
joint space enters only through the signal, the ``(B, P, M)`` cosines between
the patch tokens mapped by the same head and the ``M`` text rows, computed in at
least float32. The adapter provides the signal only with text options on a
model with a joint space (:meth:`EncoderAdapter.available_signals`);
``attach`` refuses such a pruner otherwise.

Downstream: pooling that reads the prefix tokens (CLS pooling), averages the
patch tokens, or attends over them (SigLIP's and timm's ``map`` heads) works on
any token count. ``last_hidden_state`` and the ``hidden_states`` after the
pruning point have ``p + K`` tokens. Spatial outputs that need the full patch
grid cannot be rebuilt: ``forward_intermediates`` of timm and open_clip towers
raises ``ValueError`` when an ``NCHW`` intermediate after the pruning point is
requested (``output_fmt="NLC"`` works).
"""

from __future__ import annotations

import abc
import inspect
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from prunekit.adapters.base import Adapter, Undo, override_attribute, undo_on_error
from prunekit.adapters.layout import TokenLayout, patch_grid_layout
from prunekit.core.inputs import compute_dtype
from prunekit.core.points import IN_ENCODER

if TYPE_CHECKING:
    from prunekit.adapters.attach import AttachHandle

#: Maps ``(B, P, D)`` hidden states into the joint image-text space ``(B, P, D_joint)``.
JointProjection = Callable[[torch.Tensor], torch.Tensor]

#: the signal of patch-text cosines in the joint space (see :mod:`prunekit.core.signals`)
JOINT_TEXT_COSINE = "joint_text_cosine"


def check_layer(layer: object, num_layers: int) -> int:
    """Return ``layer`` if it is a valid pruning point for an encoder of ``num_layers`` blocks."""
    if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
        raise TypeError(
            f"layer must be an int (prune after that many blocks), got {type(layer).__name__}: {layer!r}"
        )
    layer = int(layer)
    if not 0 <= layer <= num_layers - 1:
        raise ValueError(
            f"layer must be in [0, {num_layers - 1}] for this {num_layers}-block encoder "
            f"(layer=L runs blocks 0..L-1 on every token and prunes the input of block L), got {layer}"
        )
    return layer


class EncoderAdapter(Adapter):
    """Base of adapters that prune inside a vision encoder (point ``IN_ENCODER``).

    A family implements :meth:`matches`, :meth:`blocks` and
    :attr:`num_prefix_tokens`; families with a joint image-text space also
    implement :meth:`joint_projection` (and :meth:`encode_texts` when the model
    has its own text tower). The options are keyword arguments of ``prunekit.attach``.

    Options:
        layer: prune after this many blocks (see the module docstring), required.
        text_embeds: ``(M, D_joint)`` or ``(B, M, D_joint)`` text embeddings in
            the model's joint space, for text-conditioned pruners.
        texts: a list of strings embedded once with the model's own text tower.
        tokenizer: the tokenizer of the model's text tower, required with ``texts``.

    With text options the adapter provides the signal ``joint_text_cosine``
    (:meth:`joint_text_cosine`) to pruners that require it.
    """

    points: ClassVar[tuple[str, ...]] = (IN_ENCODER,)
    #: name of the hidden-states argument of a block when it is passed by keyword
    hidden_kwarg: ClassVar[str] = "hidden_states"

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        layer: int,
        text_embeds: torch.Tensor | None = None,
        texts: Sequence[str] | None = None,
        tokenizer: Any = None,
    ) -> None:
        super().__init__(model)
        self.layer = check_layer(layer, len(self.blocks()))
        self.text_embeds = self._text_option(text_embeds, texts, tokenizer)
        self._index: torch.Tensor | None = None  # (B, p + K) kept positions of the last pruned call
        self._full_length = 0

    # -- what a family provides ------------------------------------------------
    @abc.abstractmethod
    def blocks(self) -> Sequence[torch.nn.Module]:
        """The encoder's transformer blocks, in order."""

    @property
    @abc.abstractmethod
    def num_prefix_tokens(self) -> int:
        """Tokens before the patch tokens that are always kept ([CLS], registers)."""

    @property
    def batch_first(self) -> bool:
        """Whether the blocks take ``(B, N, D)`` (else ``(N, B, D)``)."""
        return True

    def patch_size(self) -> tuple[int, int]:
        """``(height, width)`` in pixels of one patch (for :meth:`token_layouts`)."""
        raise NotImplementedError(f"{type(self).__name__} does not say its patch size")

    def token_layouts(self, inputs: Mapping[str, Any], **options: Any) -> list[TokenLayout]:
        """Per image of ``inputs["pixel_values"]`` ``(B, 3, H, W)`` (for timm and open_clip
        towers: the image tensor under that key): its ``(H / p) x (W / p)`` patch grid over
        the whole picture; the prefix tokens are not in the pruned sequence."""
        pixels = inputs.get("pixel_values")
        if not isinstance(pixels, torch.Tensor) or pixels.dim() != 4:
            raise ValueError("the token layout needs inputs['pixel_values'] of shape (B, 3, H, W)")
        ph, pw = self.patch_size()
        layout = patch_grid_layout((int(pixels.shape[-2]) // ph, int(pixels.shape[-1]) // pw))
        return [layout] * int(pixels.shape[0])

    def joint_projection(self) -> JointProjection | None:
        """The model's own map of hidden states into the joint image-text space, if it has one."""
        return None

    def joint_dim(self) -> int | None:
        """Width of the joint image-text space, if the model has one."""
        return None

    def has_text_tower(self) -> bool:
        """Whether :meth:`encode_texts` can embed strings with the model's own text tower."""
        return False

    def encode_texts(self, texts: list[str], tokenizer: Any) -> torch.Tensor:
        """``(M, D_joint)`` embeddings of ``texts`` from the model's own text tower."""
        raise NotImplementedError

    # -- signals -------------------------------------------------------------------
    def available_signals(self) -> frozenset[str]:
        """``joint_text_cosine`` when text was given (which needs a joint space), else none."""
        return frozenset({JOINT_TEXT_COSINE}) if self.text_embeds is not None else frozenset()

    def missing_signals_note(self, missing: frozenset[str]) -> str:
        """Why ``joint_text_cosine`` is missing: no joint space, or no text given."""
        if JOINT_TEXT_COSINE not in missing:
            return ""
        if self.joint_projection() is None:
            return (
                f"{JOINT_TEXT_COSINE} compares the patch tokens with text in a joint image-text "
                f"space, which {self._model_name()} does not have (no text tower or visual "
                "projection); use a CLIP/SigLIP-style model"
            )
        return f"{JOINT_TEXT_COSINE} needs text: pass texts=[...] with tokenizer=, or text_embeds="

    def joint_text_cosine(self, patches: torch.Tensor) -> torch.Tensor:
        """``(B, P, M)`` cosines between the patch tokens ``(B, P, D)`` mapped by
        :meth:`joint_projection` and the text rows, in at least float32."""
        with torch.no_grad():
            joint = self.joint_projection()(patches)
        joint = joint.to(compute_dtype(joint.dtype))
        text = self._batched_text(joint.shape[0], joint)
        unit_text = torch.nn.functional.normalize(text, dim=-1)
        norm = torch.linalg.vector_norm(joint, dim=-1, keepdim=True).clamp_min(1e-12)
        return torch.matmul(joint, unit_text.transpose(-1, -2)) / norm

    # -- options -------------------------------------------------------------------
    def _model_name(self) -> str:
        return type(self.model).__name__

    def _text_option(
        self, text_embeds: object, texts: object, tokenizer: object
    ) -> torch.Tensor | None:
        if texts is None and text_embeds is None:
            if tokenizer is not None:
                raise ValueError("tokenizer was given without texts (pass texts=[...] as well)")
            return None
        if self.joint_projection() is None:
            given = "texts" if texts is not None else "text_embeds"
            raise ValueError(
                f"{given}: {self._model_name()} ({self.family}) has no joint image-text space "
                "(no text tower or visual projection), so its tokens cannot be compared with text; "
                "use a text-free pruner or a CLIP/SigLIP-style model"
            )
        if texts is not None and text_embeds is not None:
            raise ValueError("pass either texts (with tokenizer) or text_embeds, not both")
        if texts is not None:
            return self._encode_text_option(texts, tokenizer)
        return self._check_text_embeds(text_embeds)

    def _encode_text_option(self, texts: object, tokenizer: object) -> torch.Tensor:
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
        texts = list(texts)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be a non-empty list of strings")
        if not self.has_text_tower():
            raise ValueError(
                f"texts: {self._model_name()} has no text tower to embed them; "
                "pass text_embeds computed with the paired text model instead"
            )
        if tokenizer is None:
            raise ValueError(
                f"texts needs tokenizer= (the tokenizer of {self._model_name()}'s text tower)"
            )
        with torch.no_grad():
            embeds = self.encode_texts(texts, tokenizer)
        return self._check_text_embeds(embeds)

    def _check_text_embeds(self, text_embeds: object) -> torch.Tensor:
        if not isinstance(text_embeds, torch.Tensor):
            raise TypeError(f"text_embeds must be a torch.Tensor, got {type(text_embeds).__name__}")
        if text_embeds.dim() not in (2, 3) or not text_embeds.is_floating_point():
            raise ValueError(
                "text_embeds must be a float tensor (M, D_joint) or (B, M, D_joint), "
                f"got {text_embeds.dtype} {tuple(text_embeds.shape)}"
            )
        dim = self.joint_dim()
        if dim is not None and text_embeds.shape[-1] != dim:
            raise ValueError(
                f"text_embeds must have {dim} features ({self._model_name()}'s joint space), "
                f"got shape {tuple(text_embeds.shape)}"
            )
        if text_embeds.shape[-2] == 0:
            raise ValueError("text_embeds has no rows")
        return text_embeds.detach()

    # -- installation ----------------------------------------------------------------
    def install(self, handle: AttachHandle) -> list[Undo]:
        blocks = self.blocks()
        undos: list[Undo] = []

        def prune_hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple | None:
            return self._prune_block_input(handle, args, kwargs)

        def mask_hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple | None:
            return self._subset_masks(args, kwargs)

        with undo_on_error(undos):
            hook = blocks[self.layer].register_forward_pre_hook(prune_hook, with_kwargs=True)
            undos.append(hook.remove)
            for block in blocks[self.layer + 1 :]:
                hook = block.register_forward_pre_hook(mask_hook, with_kwargs=True)
                undos.append(hook.remove)
            undos.extend(self.install_extras())
            undos.append(self._forget)
        return undos

    def install_extras(self) -> list[Undo]:
        """Family-specific instance changes (e.g. guards); their undo callables."""
        return []

    def _forget(self) -> None:
        self._index = None
        self._full_length = 0

    # -- the hooks ---------------------------------------------------------------------
    def _hidden(self, args: tuple, kwargs: dict) -> tuple[torch.Tensor, bool]:
        """The block's hidden-states argument and whether it was positional."""
        if args and isinstance(args[0], torch.Tensor):
            return args[0], True
        hidden = kwargs.get(self.hidden_kwarg)
        if not isinstance(hidden, torch.Tensor):
            raise RuntimeError(
                f"prunekit could not find the hidden states of block {self.layer} "
                f"(no positional tensor and no {self.hidden_kwarg!r} keyword)"
            )
        return hidden, False

    def _prune_block_input(self, handle: AttachHandle, args: tuple, kwargs: dict) -> tuple | None:
        hidden, positional = self._hidden(args, kwargs)
        x = hidden if self.batch_first else hidden.transpose(0, 1)
        batch, length, _ = x.shape
        p = self.num_prefix_tokens
        if length <= p:
            raise ValueError(
                f"block {self.layer} got {length} tokens, no patch token after the {p} prefix tokens"
            )
        patches = x[:, p:]
        tokens, text, signals = patches, None, None
        if JOINT_TEXT_COSINE in handle.required_signals:  # raw tokens, joint-space cosines
            signals = {JOINT_TEXT_COSINE: self.joint_text_cosine(patches)}
        elif self.text_embeds is not None:  # tokens and text both in the joint space
            with torch.no_grad():
                tokens = self.joint_projection()(patches)
            text = self._batched_text(batch, tokens)
        result = handle.prune(tokens, text_embeds=text, signals=signals)
        if bool((result.counts == result.valid_counts).all()):
            self._forget()  # the budget covers every token: the model's own path, untouched
            return None
        if result.is_ragged:  # only an adaptive pruner (energy=, score_mass) chooses per image
            raise ValueError(
                f"{type(handle.pruner).__name__} kept different numbers of tokens per image "
                f"({result.counts.tolist()}): the encoder's blocks run on a rectangular batch, so "
                "in-encoder pruning needs one count for every image; give adaptive budgets one "
                "image per call, or use a fixed budget"
            )

        if result.values is not None and tokens is not patches:
            raise ValueError(
                "a merging pruner returns token values in the space it saw (here the joint "
                "image-text space); use it inside an encoder without text options"
            )
        kept = torch.cat([x[:, :p], result.kept_tokens(patches)], dim=1)
        index = result.indices.to(x.device) + p
        prefix = torch.arange(p, device=x.device).expand(batch, p)
        self._index = torch.cat([prefix, index], dim=1)
        self._full_length = length
        new_hidden = kept if self.batch_first else kept.transpose(0, 1)
        if positional:
            args = (new_hidden, *args[1:])
        else:
            kwargs = {**kwargs, self.hidden_kwarg: new_hidden}
        return self._subset_masks(args, kwargs) or (args, kwargs)

    def _batched_text(self, batch: int, tokens: torch.Tensor) -> torch.Tensor:
        text = self.text_embeds.to(device=tokens.device, dtype=tokens.dtype)
        if text.dim() == 2:
            return text.unsqueeze(0).expand(batch, -1, -1)
        if text.shape[0] != batch:
            raise ValueError(
                f"text_embeds has {text.shape[0]} rows of text per batch but the encoder got "
                f"{batch} images; pass (M, D_joint) text to share it across the batch"
            )
        return text

    def _subset_masks(self, args: tuple, kwargs: dict) -> tuple | None:
        """Subset the attention masks of a block's call to the kept tokens (None: nothing to do)."""
        index = self._index
        if index is None:
            return None
        hidden, _ = self._hidden(args, kwargs)
        kept_length = hidden.shape[1] if self.batch_first else hidden.shape[0]
        if kept_length != index.shape[1]:
            return None  # not the call that was pruned (e.g. a block called on its own)
        changed = False
        new_args = list(args)
        for i in range(1, len(args)):
            if isinstance(args[i], torch.Tensor):
                new_args[i] = self._subset_mask(args[i], f"positional argument {i}")
                changed |= new_args[i] is not args[i]
        new_kwargs = dict(kwargs)
        for key, value in kwargs.items():
            if "mask" in key and isinstance(value, torch.Tensor):
                new_kwargs[key] = self._subset_mask(value, key)
                changed |= new_kwargs[key] is not value
        return (tuple(new_args), new_kwargs) if changed else None

    def _subset_mask(self, mask: torch.Tensor, name: str) -> torch.Tensor:
        index, full = self._index, self._full_length
        batch = index.shape[0]
        if mask.dim() < 2 or mask.shape[-1] != full:
            return mask  # not sized to the token count
        index = index.to(mask.device)
        if mask.dim() == 2:
            if mask.shape[0] != batch:
                raise ValueError(
                    f"cannot subset the attention mask ({name}) of shape {tuple(mask.shape)} to the "
                    f"kept tokens: a 2-D mask must be (B, N) = ({batch}, {full})"
                )
            return torch.gather(mask, 1, index)
        if mask.shape[0] not in (1, batch):
            raise ValueError(
                f"cannot subset the attention mask ({name}) of shape {tuple(mask.shape)} to the "
                f"kept tokens: its first dimension must be the batch ({batch}) or 1"
            )
        mask = mask.expand(batch, *mask.shape[1:])
        middle = [1] * (mask.dim() - 2)
        cols = index.view(batch, *middle, index.shape[1]).expand(*mask.shape[:-1], index.shape[1])
        mask = torch.gather(mask, -1, cols)
        if mask.shape[-2] == full:
            rows = index.view(batch, *middle[:-1], index.shape[1], 1).expand(
                *mask.shape[:-2], index.shape[1], mask.shape[-1]
            )
            mask = torch.gather(mask, -2, rows)
        return mask


def _taken_blocks(num_blocks: int, indices: object) -> list[int]:
    """Blocks whose outputs ``forward_intermediates(indices=...)`` returns (timm / open_clip semantics)."""
    if indices is None:
        return list(range(num_blocks))
    if isinstance(indices, int):
        return list(range(num_blocks - indices, num_blocks))  # the last ``indices`` blocks
    return [int(i) % num_blocks for i in indices]


def guard_intermediates(module: torch.nn.Module, layer: int, num_blocks: int) -> Undo:
    """Make ``module.forward_intermediates`` refuse NCHW outputs of pruned blocks with a clear error.

    Intermediates of blocks ``layer`` and later have fewer tokens than the patch
    grid, so they cannot be reshaped to ``(B, C, H, W)``; ``NLC`` outputs work.
    """
    original = module.forward_intermediates
    signature = inspect.signature(original)

    def forward_intermediates(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        if bound.arguments.get("output_fmt") == "NCHW":
            late = [
                i for i in _taken_blocks(num_blocks, bound.arguments.get("indices")) if i >= layer
            ]
            if late:
                raise ValueError(
                    f"forward_intermediates cannot return NCHW maps of blocks {late}: prunekit "
                    f"prunes the tokens from block {layer} on, so they no longer fill the patch "
                    "grid; pass output_fmt='NLC' (or intermediates before the pruning point)"
                )
        return original(*args, **kwargs)

    return override_attribute(module, "forward_intermediates", forward_intermediates)
