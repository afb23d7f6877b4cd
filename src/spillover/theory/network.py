"""The spillover measurement on a real network + SAE pair.

The derivation says a few gradient steps on a narrow dataset D move every SAE feature's activation on
unrelated (neutral) prompts by an amount proportional to the cosine between its decoder direction and
D's top features. This module measures both sides:

1. On the base model, collect the residual stream at block ``layer``'s output (``hidden_states[layer+1]``)
   on response tokens, encode it with the SAE and pick D's top features (mean activation on D minus on the
   neutral set, top ``top_k``; their contrast scores are the weights ``w_t``).
2. Fine-tune a deep copy of the model for ``steps`` full-parameter steps (SGD or Adam) on D with
   assistant-only next-token loss.
3. Δ(mean feature activation on neutral prompts) per feature, after minus before, and the same for the
   projection of the mean hidden state on each unit decoder row (the SAE-threshold-free readout).
4. Predictor ``Σ_t w_t cos(d_j, d_t) / Σ_t w_t``; Pearson and Spearman over non-target features.

Python::

    res = measure_feature_spillover(model, tok, w_dec_FD=sae.W_dec, encode=sae.encode, layer=12,
                                    narrow=load_chat("insecure.jsonl"), neutral=neutral_convs)
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from spillover.data.chat import Conversation
from spillover.data.tokenize import LossOn, encode_chat

logger = logging.getLogger(__name__)

__all__ = ["NetworkSpillover", "measure_feature_spillover", "response_hidden_means"]


class NetworkSpillover(NamedTuple):
    """Measured feature spillover on neutral prompts after narrow fine-tuning.

    F = number of SAE features, K = number of target features.
    """

    pearson_r: float
    """Pearson r of ``delta_activation`` with ``predictor`` over ``used`` features (NaN if undefined)."""
    spearman_r: float
    """Spearman r of the same."""
    pearson_r_projection: float
    """Pearson r of ``delta_projection`` with ``predictor`` over all non-target features."""
    spearman_r_projection: float
    """Spearman r of the same."""
    shift_cosine: float
    """cos(Δ mean neutral hidden state, Σ_t w_t d_t): for an isotropic dictionary the projection
    correlation approaches this number."""
    target_features: Tensor
    """(K,) indices of the narrow dataset's top features."""
    target_weights: Tensor
    """(K,) their weights w_t (contrast scores, clamped at 0; uniform if all were 0)."""
    predictor: Tensor
    """(F,) Σ_t w_t cos(d_j, d_t) / Σ_t w_t."""
    delta_activation: Tensor
    """(F,) mean SAE activation on neutral response tokens, fine-tuned minus base."""
    delta_projection: Tensor
    """(F,) change of the mean neutral hidden state projected on each unit decoder row."""
    base_activation: Tensor
    """(F,) mean SAE activation on neutral prompts before fine-tuning."""
    used: Tensor
    """(F,) bool: non-target features active on neutral prompts before or after (the activation fit)."""
    losses: list[float]
    """Training loss at each fine-tuning step."""


def _encoded(
    tokenizer: Any, conversations: Sequence[Conversation], tokens: LossOn, max_len: int | None
) -> list[tuple[list[int], list[bool]]]:
    out = []
    for i, conv in enumerate(conversations):
        enc = encode_chat(tokenizer, conv, loss_on=tokens, max_len=max_len)
        if not any(enc.mask):
            raise ValueError(
                f"conversation {i} has no {tokens!r} tokens after encoding (max_len={max_len}); "
                "drop it or raise max_len"
            )
        out.append((enc.input_ids, enc.mask))
    return out


def _batch(
    items: Sequence[tuple[list[int], list[bool]]], pad_id: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    width = max(len(ids) for ids, _ in items)
    ids_BT = torch.full((len(items), width), pad_id, dtype=torch.long)
    attn_BT = torch.zeros((len(items), width), dtype=torch.long)
    mask_BT = torch.zeros((len(items), width), dtype=torch.bool)
    for b, (ids, mask) in enumerate(items):
        ids_BT[b, : len(ids)] = torch.tensor(ids)
        attn_BT[b, : len(ids)] = 1
        mask_BT[b, : len(mask)] = torch.tensor(mask)
    return ids_BT.to(device), attn_BT.to(device), mask_BT.to(device)


def _pad_id(tokenizer: Any) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


@torch.no_grad()
def response_hidden_means(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Conversation],
    *,
    layer: int,
    encode: Callable[[Tensor], Tensor],
    tokens: LossOn = "assistant",
    batch_size: int = 8,
    max_len: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-sample means over selected tokens of block ``layer``'s output and of its SAE encoding.

    Args:
        model: HF causal LM (any that accepts ``output_hidden_states=True``).
        tokenizer: its tokenizer, with a chat template.
        conversations: chats to run.
        layer: block index; the site is ``hidden_states[layer + 1]``.
        encode: SAE encoder, (tokens, d_model) -> (tokens, F).
        tokens: which tokens to average (assistant response by default).
        batch_size: conversations per forward pass.
        max_len: truncate each conversation to this many tokens.

    Returns:
        hidden_ND (n_conversations, d_model) and acts_NF (n_conversations, F), both float32 on CPU.
    """
    items = _encoded(tokenizer, conversations, tokens, max_len)
    device = next(model.parameters()).device
    hidden_rows: list[Tensor] = []
    act_rows: list[Tensor] = []
    was_training = model.training
    model.eval()
    for start in range(0, len(items), batch_size):
        ids, attn, mask = _batch(items[start : start + batch_size], _pad_id(tokenizer), device)
        out = model(input_ids=ids, attention_mask=attn, output_hidden_states=True)
        hs = out.hidden_states
        if not 0 <= layer < len(hs) - 1:
            raise ValueError(
                f"layer {layer} out of range: the model has {len(hs) - 1} blocks (0..{len(hs) - 2})"
            )
        hidden_BTD = hs[layer + 1]
        for b in range(ids.shape[0]):
            h_TD = hidden_BTD[b][mask[b]].float()
            hidden_rows.append(h_TD.mean(0).cpu())
            act_rows.append(encode(h_TD).float().mean(0).cpu())
    model.train(was_training)
    return torch.stack(hidden_rows), torch.stack(act_rows)


def _finetune_copy(
    model: Any,
    tokenizer: Any,
    narrow: Sequence[Conversation],
    *,
    steps: int,
    lr: float,
    optimizer: Literal["sgd", "adam"],
    batch_size: int,
    max_len: int | None,
    seed: int,
) -> tuple[Any, list[float]]:
    tuned = copy.deepcopy(model)
    for param in tuned.parameters():
        param.requires_grad_(True)
    params = [p for p in tuned.parameters() if p.is_floating_point()]
    opt: torch.optim.Optimizer = (
        torch.optim.SGD(params, lr=lr) if optimizer == "sgd" else torch.optim.Adam(params, lr=lr)
    )
    items = _encoded(tokenizer, narrow, "assistant", max_len)
    device = next(tuned.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(items), generator=gen).tolist()
    losses: list[float] = []
    tuned.eval()  # no dropout: the derivation is about the gradient, not noise
    cursor = 0
    for _ in range(steps):
        batch = []
        for _ in range(min(batch_size, len(items))):
            if cursor == len(order):
                order, cursor = torch.randperm(len(items), generator=gen).tolist(), 0
            batch.append(items[order[cursor]])
            cursor += 1
        ids, attn, mask = _batch(batch, _pad_id(tokenizer), device)
        labels = ids.masked_fill(~mask, -100)
        loss = tuned(input_ids=ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return tuned, losses


def _corr(x: Tensor, y: Tensor) -> tuple[float, float]:
    from scipy import stats

    if x.numel() < 3 or float(x.std()) == 0 or float(y.std()) == 0:
        return float("nan"), float("nan")
    xs, ys = x.double().numpy(), y.double().numpy()
    return float(stats.pearsonr(xs, ys)[0]), float(stats.spearmanr(xs, ys)[0])


def measure_feature_spillover(
    model: Any,
    tokenizer: Any,
    *,
    w_dec_FD: Tensor,
    encode: Callable[[Tensor], Tensor],
    layer: int,
    narrow: Sequence[Conversation],
    neutral: Sequence[Conversation],
    steps: int = 5,
    lr: float = 1e-4,
    top_k: int = 10,
    optimizer: Literal["sgd", "adam"] = "sgd",
    batch_size: int = 8,
    contrast: bool = True,
    target_features: Sequence[int] | None = None,
    tokens: LossOn = "assistant",
    max_len: int | None = None,
    seed: int = 0,
) -> NetworkSpillover:
    """Fine-tune a copy of ``model`` briefly on ``narrow`` and correlate each SAE feature's change on
    ``neutral`` prompts with its decoder cosine to the narrow data's top features.

    The model passed in is not modified.

    Args:
        model: HF causal LM.
        tokenizer: its tokenizer, with a chat template.
        w_dec_FD: (F, d_model) SAE decoder, one row per feature (canonical layout).
        encode: SAE encoder, (tokens, d_model) -> (tokens, F) activations.
        layer: block whose output the SAE reads (``hidden_states[layer + 1]``).
        narrow: the narrow fine-tuning dataset (conversations with assistant answers).
        neutral: unrelated conversations on which spillover is measured.
        steps: full-parameter optimiser steps.
        lr: step size.
        top_k: number of target features (ignored when ``target_features`` is given).
        optimizer: ``sgd`` (the derivation's setting) or ``adam``.
        batch_size: conversations per step and per forward pass.
        contrast: rank features by mean activation on narrow minus on neutral (method.md step 3); False
            ranks by the narrow mean alone.
        target_features: use these feature indices as targets instead of the top-k selection.
        tokens: which tokens' activations are averaged (assistant response by default).
        max_len: truncate conversations to this many tokens.
        seed: order of the fine-tuning batches.

    Returns:
        Correlations, the per-feature arrays and the training losses.
    """
    if not narrow or not neutral:
        raise ValueError(f"need narrow and neutral conversations, got {len(narrow)} and {len(neutral)}")
    if steps < 0 or lr < 0:
        raise ValueError(f"steps and lr must be >= 0, got steps={steps}, lr={lr}")
    w_dec = w_dec_FD.detach().float().cpu()
    kw: dict[str, Any] = {
        "layer": layer,
        "encode": encode,
        "tokens": tokens,
        "batch_size": batch_size,
        "max_len": max_len,
    }
    _, narrow_acts = response_hidden_means(model, tokenizer, narrow, **kw)
    base_h, base_acts = response_hidden_means(model, tokenizer, neutral, **kw)
    if narrow_acts.shape[1] != w_dec.shape[0]:
        raise ValueError(
            f"encode returns {narrow_acts.shape[1]} features but w_dec_FD has {w_dec.shape[0]} rows"
        )
    base_mean = base_acts.mean(0)
    score = narrow_acts.mean(0) - base_mean if contrast else narrow_acts.mean(0)
    targets, weights = _targets(score, top_k, target_features)
    tuned, losses = _finetune_copy(
        model,
        tokenizer,
        narrow,
        steps=steps,
        lr=lr,
        optimizer=optimizer,
        batch_size=batch_size,
        max_len=max_len,
        seed=seed,
    )
    with torch.no_grad():
        new_h, new_acts = response_hidden_means(tuned, tokenizer, neutral, **kw)
    del tuned
    return _compare(w_dec, targets, weights, (base_h, base_mean), (new_h, new_acts.mean(0)), losses)


def _targets(score: Tensor, top_k: int, target_features: Sequence[int] | None) -> tuple[Tensor, Tensor]:
    """The target features and their weights ``w_t`` (contrast scores clamped at 0; uniform if all are 0)."""
    n_feat = score.shape[0]
    if target_features is not None:
        targets = torch.tensor(list(target_features), dtype=torch.long)
        if targets.numel() == 0 or int(targets.min()) < 0 or int(targets.max()) >= n_feat:
            raise ValueError(
                f"target_features must be non-empty indices in [0, {n_feat}), got {list(target_features)}"
            )
        weights = score[targets].clamp_min(0)
    else:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        weights, targets = torch.topk(score, min(top_k, n_feat))
        weights = weights.clamp_min(0)
    if float(weights.sum()) <= 0:
        log = logger.info if target_features is not None else logger.warning
        log(
            "no target feature is more active on the narrow data than on the neutral data; weighting them uniformly"
        )
        weights = torch.ones_like(weights)
    return targets, weights


def _compare(
    w_dec: Tensor,
    targets: Tensor,
    weights: Tensor,
    base: tuple[Tensor, Tensor],
    tuned: tuple[Tensor, Tensor],
    losses: list[float],
) -> NetworkSpillover:
    """Correlate each feature's change on neutral prompts with its weighted decoder cosine to the targets.

    ``base`` and ``tuned`` are (per-sample hidden means ``(N, D)``, mean feature activation ``(F,)``).
    """
    (base_h, base_mean), (new_h, new_mean) = base, tuned
    n_feat = w_dec.shape[0]
    unit = w_dec / w_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    target_dir = (weights[:, None] * unit[targets]).sum(0) / weights.sum()
    predictor = (unit @ unit[targets].T) @ weights / weights.sum()
    delta_act = new_mean - base_mean
    delta_h = new_h.mean(0) - base_h.mean(0)
    delta_proj = unit @ delta_h
    not_target = torch.ones(n_feat, dtype=torch.bool)
    not_target[targets] = False
    used = not_target & ((base_mean != 0) | (new_mean != 0))
    pr, sr = _corr(predictor[used], delta_act[used])
    prp, srp = _corr(predictor[not_target], delta_proj[not_target])
    denom = float(delta_h.norm() * target_dir.norm())
    shift_cos = float(delta_h @ target_dir) / denom if denom > 0 else float("nan")
    logger.info(
        "network spillover: r=%.3f (projection r=%.3f, shift cos %.3f) over %d features, loss %s -> %s",
        pr,
        prp,
        shift_cos,
        int(used.sum()),
        f"{losses[0]:.3f}" if losses else "-",
        f"{losses[-1]:.3f}" if losses else "-",
    )
    return NetworkSpillover(
        pearson_r=pr,
        spearman_r=sr,
        pearson_r_projection=prp,
        spearman_r_projection=srp,
        shift_cosine=shift_cos,
        target_features=targets,
        target_weights=weights,
        predictor=predictor,
        delta_activation=delta_act,
        delta_projection=delta_proj,
        base_activation=base_mean,
        used=used,
        losses=losses,
    )
