"""Small GQA decoder (byte-level) for issue 15 item 4: RMSNorm, RoPE, SwiGLU, no biases, tied
nothing. Shapes are in CONFIG; the numpy forward in dump_trace.py mirrors this file exactly."""
import math
import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIG = dict(vocab=256, d_model=512, n_layers=8, n_q_heads=8, n_kv_heads=2, head_dim=64,
              d_ff=1408, rope_theta=500000.0, norm_eps=1e-5, max_seq=16384)


def rope_tables(seq, head_dim, theta, device):
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float64) / head_dim))
    ang = torch.arange(seq, device=device, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cos(ang).float(), torch.sin(ang).float()  # [seq, head_dim/2]


def apply_rope(x, cos, sin):
    # x [B, H, T, D]; rotate-half convention (pairs (i, i + D/2)), as Llama in transformers
    d2 = x.shape[-1] // 2
    x1, x2 = x[..., :d2].float(), x[..., d2:].float()
    c, s = cos[None, None], sin[None, None]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight).to(x.dtype)


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, hd = c["d_model"], c["head_dim"]
        self.nq, self.nkv, self.hd = c["n_q_heads"], c["n_kv_heads"], hd
        self.attn_norm = RMSNorm(d, c["norm_eps"])
        self.wq = nn.Linear(d, self.nq * hd, bias=False)
        self.wk = nn.Linear(d, self.nkv * hd, bias=False)
        self.wv = nn.Linear(d, self.nkv * hd, bias=False)
        self.wo = nn.Linear(self.nq * hd, d, bias=False)
        self.mlp_norm = RMSNorm(d, c["norm_eps"])
        self.w1 = nn.Linear(d, c["d_ff"], bias=False)
        self.w3 = nn.Linear(d, c["d_ff"], bias=False)
        self.w2 = nn.Linear(c["d_ff"], d, bias=False)

    def qkv(self, x, cos, sin):
        B, T, _ = x.shape
        h = self.attn_norm(x)
        q = self.wq(h).view(B, T, self.nq, self.hd).transpose(1, 2)
        k = self.wk(h).view(B, T, self.nkv, self.hd).transpose(1, 2)
        v = self.wv(h).view(B, T, self.nkv, self.hd).transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q, k, v = self.qkv(x, cos, sin)
        g = self.nq // self.nkv  # query head j reads KV head j // g
        k = k.repeat_interleave(g, dim=1)
        v = v.repeat_interleave(g, dim=1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.wo(a.transpose(1, 2).reshape(B, T, self.nq * self.hd))
        h = self.mlp_norm(x)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))


class Decoder(nn.Module):
    def __init__(self, c=CONFIG):
        super().__init__()
        self.c = c
        self.embed = nn.Embedding(c["vocab"], c["d_model"])
        self.layers = nn.ModuleList([Block(c) for _ in range(c["n_layers"])])
        self.norm = RMSNorm(c["d_model"], c["norm_eps"])
        self.head = nn.Linear(c["d_model"], c["vocab"], bias=False)
        self.apply(self._init)
        for l in self.layers:  # scaled residual projections (GPT-2 style)
            nn.init.normal_(l.wo.weight, std=0.02 / math.sqrt(2 * c["n_layers"]))
            nn.init.normal_(l.w2.weight, std=0.02 / math.sqrt(2 * c["n_layers"]))

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx):
        T = idx.shape[1]
        cos, sin = rope_tables(T, self.c["head_dim"], self.c["rope_theta"], idx.device)
        x = self.embed(idx)
        for l in self.layers:
            x = l(x, cos, sin)
        return self.head(self.norm(x))
