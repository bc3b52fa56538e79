"""Softmax-GradCAM on frozen CLIP with learned prompts (SPEC §3, §1.4).

For every positive (image, class) pair the CAM is ``CAM_k(i) = Σ_d α_k[d] · A[n_k, i, d]`` over the patch tokens
``i``, where ``A`` is the ``ln_1`` output of the last ViT block (detached) and ``α_k`` is the mean over patch tokens
of ``∂p_{n_k,c_k}/∂A`` — the gradient of the class's *masked softmax* probability. No ReLU, no normalisation:
the raw CAM is what the losses see and what is saved.

The masked softmax lets each image's positive foreground classes compete with all background prompts only;
absent foreground classes get probability 0 (SPEC §3 step 2). ``softmax="reference"`` reproduces the reference
exactly (shift by the max over *all* logits, ``+1e-5`` in the denominator, SPEC §13 item 11);
``softmax="clean"`` is the exact masked softmax (shift by the max over allowed logits, no epsilon).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tag2mask.cam.affinity import merge_attention
from tag2mask.models.clip_cam import upcast, vit_forward
from tag2mask.models.prompts import PromptLearner, encode_prompts


def masked_softmax(logits: torch.Tensor, allowed: torch.Tensor, mode: str = "reference") -> torch.Tensor:
    """Softmax of N×G ``logits`` over the entries where ``allowed`` (N×G bool) is true; 0 elsewhere."""
    if mode == "reference":
        e = torch.exp(logits - logits.max(dim=-1, keepdim=True).values) * allowed
        return e / (e.sum(dim=-1, keepdim=True) + 1e-5)
    if mode == "clean":
        return torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
    raise ValueError(f"softmax mode must be 'reference' or 'clean', got {mode!r}")


@dataclass
class CamOutput:
    """Softmax-GradCAM results for a batch of ``N`` images with ``P`` positive (image, class) pairs."""

    cam: torch.Tensor  # P×h×w raw CAMs (empty P=0 when cams were not asked for)
    logits: torch.Tensor  # N×G, scaled by exp(logit_scale); foreground prompts first
    probs: torch.Tensor  # N×G masked softmax
    pairs: torch.Tensor  # P×2 (image index, foreground class index), in the order of nonzero(fg_labels)
    grid: tuple[int, int]  # (h, w)
    att: torch.Tensor | None  # N×(h·w)×(h·w) merged attention when asked for (detached)
    num_fg: int  # C_fg: the first C_fg prompts are the foreground classes
    image_embedding: torch.Tensor  # N×E image embeddings before L2 normalisation (float32; detached)

    @property
    def fg_logits(self) -> torch.Tensor:
        """The first ``C_fg`` logit columns (what classification losses see, SPEC §1.4)."""
        return self.logits[:, : self.num_fg]

    def image(self, n: int) -> CamOutput:
        """Image ``n``'s part of a batch's output, as if it had been run alone: its CAMs, pairs (image index 0),
        logits, probabilities, attention and embedding. Images do not interact in the network, so it equals a
        batch-1 run to float32 rounding (bit-exact for a batch of one)."""
        if not 0 <= n < self.logits.shape[0]:
            raise IndexError(f"image {n} of a batch of {self.logits.shape[0]}")
        rows = self.pairs[:, 0] == n
        pairs = self.pairs[rows].clone()
        pairs[:, 0] = 0
        cam = self.cam[rows] if len(self.cam) else self.cam
        att = self.att[n : n + 1] if self.att is not None else None
        return CamOutput(cam=cam, logits=self.logits[n : n + 1], probs=self.probs[n : n + 1], pairs=pairs,
                         grid=self.grid, att=att, num_fg=self.num_fg, image_embedding=self.image_embedding[n : n + 1])


class GradCAMClip(nn.Module):
    """Frozen CLIP + a :class:`PromptLearner` → logits and Softmax-GradCAMs.

    Args:
        clip_model: an open_clip ``CLIP`` (frozen; float32 for inference).
        prompt_learner: the task's prompts (foreground names first, then background); ``None`` for fixed prompts
            whose features every :meth:`forward` call is given (the training-free mode, :mod:`tag2mask.cam.clip_es`).
        softmax: ``"reference"`` or ``"clean"`` (see the module docstring).
        att_layers: how many last blocks' attention to merge for CAA.
        num_fg: the number of foreground prompts when there is no prompt learner.
        pos_embed_f16: round the resized positional embedding to float16 (CLIP-ES, :func:`vit_forward`).
    """

    def __init__(
        self,
        clip_model: nn.Module,
        prompt_learner: PromptLearner | None,
        softmax: str = "reference",
        att_layers: int = 8,
        *,
        num_fg: int | None = None,
        pos_embed_f16: bool = False,
    ) -> None:
        super().__init__()
        if (prompt_learner is None) == (num_fg is None):
            raise ValueError("give either a prompt learner or num_fg (fixed prompts), not both or neither")
        self.clip = clip_model
        self.prompt_learner = prompt_learner
        self.softmax = softmax
        self.att_layers = att_layers
        self.num_fg = len(prompt_learner.fg_names) if prompt_learner is not None else int(num_fg)  # type: ignore[arg-type]
        self.pos_embed_f16 = pos_embed_f16
        self.clip.requires_grad_(False)

    def text_features(self) -> torch.Tensor:
        """G×E text features of the current prompts (re-encoded on every call: the context is learned)."""
        if self.prompt_learner is None:
            raise ValueError("fixed prompts: pass their text_features to forward()")
        return encode_prompts(self.clip, self.prompt_learner(), self.prompt_learner.tokens)

    def forward(
        self,
        images: torch.Tensor,
        fg_labels: torch.Tensor,
        *,
        create_graph: bool = False,
        need_attention: bool = False,
        compute_cam: bool = True,
        text_features: torch.Tensor | None = None,
    ) -> CamOutput:
        """Logits, masked softmax and the CAM of every positive pair.

        Args:
            images: N×3×H×W normalised images, H and W multiples of the patch size.
            fg_labels: N×C_fg in {0, 1}: which foreground classes are present (the softmax mask and the CAM targets).
            create_graph: keep the gradient differentiable (training through the CAM, SPEC §3 step 4).
            need_attention: also return the merged attention of the last ``att_layers`` blocks.
            compute_cam: ``False`` skips the gradient computation (e.g. classification-only training).
            text_features: G×E features of the prompts computed once (:meth:`text_features` under ``no_grad``),
                for inference over many images with fixed prompts; default: encode them now (training).
        """
        if fg_labels.shape != (images.shape[0], self.num_fg):
            raise ValueError(f"fg_labels must be {images.shape[0]}×{self.num_fg}, got {tuple(fg_labels.shape)}")
        with torch.enable_grad():
            with torch.set_grad_enabled(compute_cam):  # without CAMs the frozen image side needs no graph
                vision = vit_forward(self.clip.visual, images, need_attention, self.pos_embed_f16)
            if text_features is None:
                text_features = self.text_features()  # under autocast when the caller uses mixed precision
            # logits, softmax and the CAM gradient in float32 (a no-op without autocast)
            with torch.autocast(images.device.type, enabled=False):
                image_features = F.normalize(upcast(vision.embedding), dim=-1)
                text_features = F.normalize(upcast(text_features), dim=-1).to(image_features.dtype)
                logits = self.clip.logit_scale.exp().to(image_features.dtype) * image_features @ text_features.t()

                positive = fg_labels.bool()
                allowed = torch.ones_like(logits, dtype=torch.bool)
                allowed[:, : self.num_fg] = positive
                probs = masked_softmax(logits, allowed, self.softmax)

                pairs = positive.nonzero()
                h, w = vision.grid
                if compute_cam and len(pairs):
                    cam = self._cams(probs, vision.activation, pairs, create_graph).reshape(-1, h, w)
                else:
                    cam = logits.new_zeros((0, h, w))
        att = merge_attention(torch.stack(vision.attentions), self.att_layers).detach() if need_attention else None
        return CamOutput(cam=cam, logits=logits, probs=probs, pairs=pairs, grid=(h, w), att=att, num_fg=self.num_fg,
                         image_embedding=upcast(vision.embedding).detach())

    @staticmethod
    def _cams(probs: torch.Tensor, activation: torch.Tensor, pairs: torch.Tensor, create_graph: bool) -> torch.Tensor:
        """P×(h·w) raw CAMs from one batched vector-Jacobian product.

        Images do not interact in the network, so ``∂p[n, c]/∂A[n']`` is zero for ``n' ≠ n``. The gradients of
        all images' j-th positives are therefore taken together in one "slot" ``j``: the batched VJP runs over
        ``max positives per image`` slots instead of over all ``P`` pairs, with the same result.
        """
        n_img = probs.shape[0]
        images, classes = pairs[:, 0], pairs[:, 1]
        # slot of each pair = its rank among its image's positives
        first = torch.searchsorted(images, torch.arange(n_img, device=images.device))
        slot = torch.arange(len(pairs), device=images.device) - first[images]
        n_slots = int(slot.max()) + 1
        selectors = probs.new_zeros((n_slots, *probs.shape))
        selectors[slot, images, classes] = 1.0
        (grads,) = torch.autograd.grad(
            probs, activation, grad_outputs=selectors, is_grads_batched=True, create_graph=create_graph
        )  # n_slots×N×L×D
        weights = grads[slot, images, 1:].mean(dim=1)  # P×D: mean over patch tokens
        act = activation.detach()[images, 1:]  # P×(h·w)×D
        return torch.einsum("pd,pld->pl", weights, act)
