"""The per-head linear symmetry of multi-head self-attention, and its canonical form.

Head h of a `torch.nn.MultiheadAttention` (head dim d = E / H) computes
softmax((W_Q,h x_i + b_Q,h) . (W_K,h x_j + b_K,h) / sqrt(d)) over j, applied to
W_V,h x_j + b_V,h, and the output projection adds W_O,h times that to out_proj.bias.
Exactly function-preserving, for any invertible A and B (d x d):
- query-key: W_Q,h -> A^T W_Q,h, b_Q,h -> A^T b_Q,h, W_K,h -> A^-1 W_K,h (b_K,h likewise):
  every score is unchanged;
- value-output: W_V,h -> B W_V,h, b_V,h -> B b_V,h, W_O,h -> W_O,h B^-1;
- the key bias adds q_i . b_K,h to every score of query i: softmax ignores it (b_K free);
- the attention weights sum to 1, so the value bias adds the constant W_O b_V to the
  output: it can move into out_proj.bias.
Canonical form: b_V folded into out_proj.bias, b_K zeroed, then per head the thin SVDs of
the two circuits, the query-key circuit C_h = [W_Q,h | b_Q,h]^T W_K,h ((E+1) x E, or E x E
without biases) and the value-output circuit M_h = W_O,h W_V,h (E x E), both of rank <= d:
- C_h = U S V^T: [W_Q,h | b_Q,h] = sqrt(S) U^T, W_K,h = sqrt(S) V^T (balanced);
- M_h = U S V^T: W_V,h = V^T, W_O,h = U S. Not balanced on purpose: the rows of W_O,h then
  have the norms of the rows of M_h, which no B changes, so a cell over the output
  projection's rows (its output channels' scale) has a norm the factorization keeps.
Singular pairs in descending order; each pair's sign chosen so that sum(u) > 0 (ties: sum
of cubes of u, then of v, then +1), a rule invariant under permutations of the channels;
singular values at or below s_max * max(shape) * eps are treated as 0 (their factor rows
are zeroed). Degenerate cases: a repeated singular value leaves a rotation inside its
singular subspace undetermined (the form is then not unique on the orbit); exact zeros
are handled by the zeroing above.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from toroid.errors import InvalidArgumentError
from toroid.symmetry.slots import State
from toroid.symmetry.types import AttentionHeads


@dataclass(frozen=True)
class _Projections:
    """One attention layer's weights per head: W_Q, W_K, W_V (H, d, E), their biases
    (H, d) or None, and W_O (E, H, d)."""

    wq: torch.Tensor
    wk: torch.Tensor
    wv: torch.Tensor
    wo: torch.Tensor
    bq: torch.Tensor | None = None
    bk: torch.Tensor | None = None
    bv: torch.Tensor | None = None


def _read(state: State, att: AttentionHeads, dtype: torch.dtype | None = None) -> _Projections:
    h, d = att.heads, att.head_dim
    w = state[att.in_proj].to(dtype).reshape(3, h, d, -1)
    wo = state[att.out_proj].to(dtype).reshape(-1, h, d)
    if att.in_bias is None:
        return _Projections(w[0], w[1], w[2], wo)
    b = state[att.in_bias].to(dtype).reshape(3, h, d)
    return _Projections(w[0], w[1], w[2], wo, b[0], b[1], b[2])


def _write(state: State, att: AttentionHeads, p: _Projections) -> None:
    """Store `p` into `state` (new tensors in the state's dtypes)."""
    weight = state[att.in_proj]
    state[att.in_proj] = torch.cat([p.wq, p.wk, p.wv]).reshape(weight.shape).to(weight.dtype)
    state[att.out_proj] = p.wo.reshape(state[att.out_proj].shape).to(weight.dtype)
    if att.in_bias is not None:
        assert p.bq is not None and p.bk is not None and p.bv is not None
        bias = torch.cat([p.bq, p.bk, p.bv]).reshape(-1)
        state[att.in_bias] = bias.to(state[att.in_bias].dtype)


def fold_attention_biases_(state: State, att: AttentionHeads) -> None:
    """Value bias moved into the output bias (W_O b_V), key bias zeroed: the function is
    unchanged (attention weights sum to 1; softmax ignores a per-query constant)."""
    if att.in_bias is None or att.out_bias is None:
        return
    e = att.embed_dim
    b = state[att.in_bias]
    state[att.out_bias] = state[att.out_bias] + state[att.out_proj] @ b[2 * e :]
    state[att.in_bias] = torch.cat([b[:e], torch.zeros_like(b[e:])])


def _pair_signs(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """+1 or -1 per singular pair (columns of u and v): sum(u) > 0, ties broken by the sum
    of cubes of u, then by the sums of v and of its cubes, then +1. Invariant under
    permutations of u's and v's entries."""
    keys = (u.sum(0), u.pow(3).sum(0), v.sum(0), v.pow(3).sum(0))
    decided = keys[-1]
    for key in reversed(keys[:-1]):
        decided = torch.where(key != 0, key, decided)
    return torch.where(decided < 0, -1.0, 1.0).to(u.dtype)


def _svd(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The leading `rank` singular triplets (U (m, r), S (r,), V (n, r)) with signs fixed
    and negligible singular values set to 0 (with their vectors)."""
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    u, s, v = u[:, :rank], s[:rank], vh[:rank].T
    tol = (s[0] if s.numel() else 0.0) * max(matrix.shape) * torch.finfo(matrix.dtype).eps
    kept = (s > tol).to(s.dtype)
    signs = _pair_signs(u, v) * kept
    return u * signs, s * kept, v * signs


def circuits(state: State, att: AttentionHeads) -> tuple[torch.Tensor, torch.Tensor]:
    """Per head, the query-key circuit [W_Q,h | b_Q,h]^T W_K,h ((H, E+1, E), or (H, E, E)
    without biases) and the value-output circuit W_O,h W_V,h ((H, E, E)), in float64: what
    the per-head linear symmetry leaves unchanged."""
    p = _read(state, att, torch.float64)
    query = p.wq if p.bq is None else torch.cat([p.wq, p.bq[:, :, None]], dim=2)
    return query.transpose(1, 2) @ p.wk, torch.einsum("ohd,hdi->hoi", p.wo, p.wv)


def factor_heads_(state: State, att: AttentionHeads) -> None:
    """Replace every head's projections by the canonical factors of its two circuits (see
    the module's docstring); fold the biases first (`fold_attention_biases_`), as the
    factors keep b_K and b_V as they are."""
    old = _read(state, att, torch.float64)
    qk, vo = circuits(state, att)
    d, e = att.head_dim, att.embed_dim
    queries, keys, values, outputs = [], [], [], []
    for h in range(att.heads):
        u, s, v = _svd(qk[h], d)
        queries.append(s.sqrt()[:, None] * u.T)  # (d, E), or (d, E + 1): [W_Q | b_Q]
        keys.append(s.sqrt()[:, None] * v.T)
        u, s, v = _svd(vo[h], d)
        values.append(v.T)
        outputs.append(u * s)
    query = torch.stack(queries)
    new = _Projections(
        wq=query[:, :, :e],
        wk=torch.stack(keys),
        wv=torch.stack(values),
        wo=torch.stack(outputs, dim=1),
        bq=query[:, :, e] if old.bq is not None else None,
        bk=old.bk,
        bv=old.bv,
    )
    _write(state, att, new)


def is_factored(state: State, att: AttentionHeads, *, atol: float) -> bool:
    """Whether the biases are folded and every head holds its canonical factors."""
    bias = state[att.in_bias] if att.in_bias is not None else None
    if bias is not None and float(bias[att.embed_dim :].abs().max()) > atol:
        return False
    factored = dict(state)
    factor_heads_(factored, att)
    tensors = [att.in_proj, att.out_proj] + ([att.in_bias] if att.in_bias else [])
    return all(
        float((factored[t].double() - state[t].double()).abs().max()) <= atol for t in tensors
    )


def move_heads_(
    state: State,
    att: AttentionHeads,
    *,
    query_key: torch.Tensor,
    value_output: torch.Tensor,
    key_bias: torch.Tensor | None = None,
    value_bias: torch.Tensor | None = None,
) -> None:
    """Apply per head h the invertible query_key[h] = A_h and value_output[h] = B_h ((H, d,
    d) each): W_Q,h -> A_h^T W_Q,h (and b_Q,h), W_K,h -> A_h^-1 W_K,h (and b_K,h), W_V,h ->
    B_h W_V,h (and b_V,h), W_O,h -> W_O,h B_h^-1; then add `key_bias` (E) to b_K and
    `value_bias` (E) to b_V, compensated by subtracting W_O value_bias from out_proj.bias."""
    if att.in_bias is None and (key_bias is not None or value_bias is not None):
        raise InvalidArgumentError(
            f"attention {att.module!r} has no biases: key_bias and value_bias must be None"
        )
    expected = (att.heads, att.head_dim, att.head_dim)
    for name, m in (("query_key", query_key), ("value_output", value_output)):
        if tuple(m.shape) != expected:
            raise InvalidArgumentError(
                f"{name} of attention {att.module!r} has shape {tuple(m.shape)}, "
                f"expected {expected}"
            )
    p = _read(state, att, torch.float64)
    a, b = query_key.double(), value_output.double()
    a_t, a_inv, b_inv = a.transpose(1, 2), torch.linalg.inv(a), torch.linalg.inv(b)

    def times(m: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
        return None if bias is None else (m @ bias[:, :, None])[:, :, 0]

    e = att.embed_dim
    bk, bv = times(a_inv, p.bk), times(b, p.bv)
    if bk is not None and key_bias is not None:
        bk = bk + key_bias.double().reshape(bk.shape)
    if bv is not None and value_bias is not None:
        bv = bv + value_bias.double().reshape(bv.shape)
    moved = _Projections(
        wq=a_t @ p.wq,
        wk=a_inv @ p.wk,
        wv=b @ p.wv,
        wo=torch.einsum("ohd,hdk->ohk", p.wo, b_inv),
        bq=times(a_t, p.bq),
        bk=bk,
        bv=bv,
    )
    _write(state, att, moved)
    if att.out_bias is not None and value_bias is not None:
        out_weight = moved.wo.reshape(-1, e)
        shift = out_weight @ value_bias.double()
        state[att.out_bias] = state[att.out_bias] - shift.to(state[att.out_bias].dtype)


def random_invertible(heads: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """(heads, d, d) random invertible matrices Q1 diag(s) Q2, Q1 and Q2 random orthogonal
    (determinant +-1), s log-uniform in [1/3, 3]: condition numbers below 9."""

    def orthogonal() -> torch.Tensor:
        q, r = torch.linalg.qr(torch.randn(heads, d, d, generator=generator, dtype=torch.float64))
        signs = torch.sign(torch.diagonal(r, dim1=1, dim2=2))
        out: torch.Tensor = q * signs[:, None, :]
        return out

    log_s = (torch.rand(heads, d, generator=generator, dtype=torch.float64) * 2 - 1) * 1.0986
    return orthogonal() @ torch.diag_embed(log_s.exp()) @ orthogonal()
