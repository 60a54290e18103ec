#!/usr/bin/env python3
"""Dumps a KV trace (docs/TRACE_FORMAT.md) of a Hugging Face transformers causal LM on a text
file, for `pnmkv eval` / `pnmkv run` with workload.kind=trace.

It tokenizes the text, keeps the first --context tokens as the prompt, decodes --steps more
tokens (greedy, or sampled with --temperature and --seed), then runs the whole sequence once
more with a capturing attention function and writes, for the chosen layers and KV heads,
the post-RoPE keys and the values of every position and the post-RoPE queries of positions
--query-begin.. (default: the decode steps only). The capture sits where the model hands
q/k/v to its attention kernel (transformers' AttentionInterface, 4.51 and later), so q/k
norms and RoPE are applied exactly as the model applies them, whatever the architecture
(Llama, Mistral, Qwen2/3, Gemma, ...), and the model's own softmax scale is recorded.

    python3 scripts/dump_kv.py --model meta-llama/Llama-3.2-1B --text book.txt --out trace/ \\
        --context 8192 --steps 64 --layers 0,8,15 --kv-heads all --dtype bfloat16

    pnmkv eval --set workload.kind=trace --set workload.trace_dir=trace/ \\
        --set model.file=<a model file with the same shape> --set eval.contexts_tokens=8192 \\
        --set eval.steps=64

Limits: layers with sliding-window or chunked attention are dumped whole, and pnmkv attends
over the whole prefix, so their accuracy is not the model's; encoder-decoder and models that
bypass the AttentionInterface are refused. Host memory holds one captured layer at a time.
Not run on this project's machines (no torch there): tests/trace/dump_kv_test.sh runs it on
a tiny random Llama wherever torch and transformers are installed.

Needs torch, transformers and numpy (safetensors only for the model's own weights).
--random-config CONFIG.json builds a randomly initialised model from a config instead of
loading weights (tests); --tokenizer bytes maps UTF-8 bytes to ids (no tokenizer needed).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pnmkv_trace import STORAGES, DTYPES, TraceWriter  # noqa: E402

CAPTURE = "pnmkv_capture"


def parse_list(text, n, what):
    if text == "all":
        return list(range(n))
    try:
        out = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        sys.exit("dump_kv: --%s '%s'; allowed: 'all' or comma-separated integers" % (what, text))
    bad = [x for x in out if not 0 <= x < n]
    if bad or not out:
        sys.exit("dump_kv: --%s %s out of range; allowed: [0, %d)" % (what, bad or "(empty)", n))
    return out


class Capture:
    """Hands q/k/v of each attention call, while `sink` is set, to sink(layer, q, k, v, scaling),
    one layer at a time (so host memory holds one layer of the trace, never the model's)."""

    def __init__(self):
        self.sink = None
        self.wanted = set()
        self.seen = set()

    def __call__(self, module, query, key, value, attention_mask, **kwargs):
        if self.sink is not None:
            layer = getattr(module, "layer_idx", None)
            if layer is None:
                sys.exit("dump_kv: an attention module has no layer_idx; this model is not supported")
            if layer in self.wanted and layer not in self.seen:
                self.seen.add(layer)
                self.sink(layer, query[0].detach().float().cpu(), key[0].detach().float().cpu(),
                          value[0].detach().float().cpu(), kwargs.get("scaling"))
        return self.base(module, query, key, value, attention_mask, **kwargs)


def install_capture(cap):
    try:
        from transformers import AttentionInterface
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
    except ImportError:
        sys.exit("dump_kv: this transformers has no AttentionInterface (4.51 and later have it)")
    cap.base = sdpa_attention_forward
    AttentionInterface.register(CAPTURE, cap)
    try:  # newer versions build masks per implementation: ours takes sdpa's
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
        AttentionMaskInterface.register(CAPTURE, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    except (ImportError, KeyError, AttributeError):
        pass


def load_model(a, torch, transformers):
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[a.torch_dtype]
    # The dtype argument is `dtype` from transformers 4.56 on, `torch_dtype` before.
    version = tuple(int(x) for x in transformers.__version__.split(".")[:2] if x.isdigit())
    dkw = {"dtype": dtype} if version >= (4, 56) else {"torch_dtype": dtype}
    if a.random_config:
        with open(a.random_config) as f:
            cfg = transformers.AutoConfig.for_model(**json.load(f))
        torch.manual_seed(a.seed)
        model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation=CAPTURE, **dkw)
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(a.model, attn_implementation=CAPTURE, **dkw)
    return model.to(device=a.device, dtype=dtype).eval()


def tokenize(a, text, vocab, transformers):
    if a.tokenizer == "bytes":
        return [b % vocab for b in text.encode("utf-8")]
    tok = transformers.AutoTokenizer.from_pretrained(a.tokenizer or a.model)
    return tok(text, add_special_tokens=True)["input_ids"]


def cache_layer(past, layer):
    """(k, v) of one layer of a transformers KV cache, [kv_heads, T, head_dim] float on the CPU,
    across cache APIs (legacy tuples, DynamicCache.key_cache, DynamicCache.layers)."""
    try:
        if hasattr(past, "layers"):
            k, v = past.layers[layer].keys, past.layers[layer].values
        elif hasattr(past, "key_cache"):
            k, v = past.key_cache[layer], past.value_cache[layer]
        else:
            k, v = past[layer][0], past[layer][1]
    except (AttributeError, IndexError, TypeError):
        return None
    return k[0].float().cpu(), v[0].float().cpu()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--model", help="model name or folder (from_pretrained)")
    ap.add_argument("--random-config", help="config.json of a randomly initialised model instead of --model")
    ap.add_argument("--tokenizer", help="tokenizer name or folder (default: --model), or 'bytes'")
    ap.add_argument("--text", required=True, help="text file; its first --context tokens are the prompt")
    ap.add_argument("--out", required=True, help="trace folder to write")
    ap.add_argument("--context", type=int, required=True, help="prompt tokens")
    ap.add_argument("--steps", type=int, default=64, help="tokens decoded after the prompt")
    ap.add_argument("--query-begin", type=int, help="first position with queries (default: --context)")
    ap.add_argument("--layers", default="all", help="'all' or comma-separated layer indices")
    ap.add_argument("--kv-heads", default="all", help="'all' or comma-separated KV head indices")
    ap.add_argument("--storage", default="safetensors", choices=STORAGES)
    ap.add_argument("--dtype", default="bfloat16", choices=DTYPES, help="element type of the trace")
    ap.add_argument("--torch-dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"),
                    help="dtype the model runs in")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--temperature", type=float, default=0.0, help="0: greedy decoding")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if bool(a.model) == bool(a.random_config):
        sys.exit("dump_kv: give exactly one of --model and --random-config")
    if a.random_config and not a.tokenizer:
        sys.exit("dump_kv: --random-config needs --tokenizer (a name, or 'bytes')")

    import torch
    import transformers

    a.device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cap = Capture()
    install_capture(cap)
    model = load_model(a, torch, transformers)
    cfg = model.config
    n_layers = cfg.num_hidden_layers
    q_heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or q_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // q_heads
    group = q_heads // kv_heads
    layers = parse_list(a.layers, n_layers, "layers")
    heads = parse_list(a.kv_heads, kv_heads, "kv-heads")
    cap.wanted = set(layers)
    qb = a.context if a.query_begin is None else a.query_begin
    if not 0 <= qb <= a.context:
        sys.exit("dump_kv: --query-begin %d; allowed: [0, --context = %d]" % (qb, a.context))

    with open(a.text, encoding="utf-8", errors="replace") as f:
        ids = tokenize(a, f.read(), cfg.vocab_size, transformers)
    if len(ids) < a.context:
        sys.exit("dump_kv: the text has %d tokens; --context needs %d" % (len(ids), a.context))
    ids = ids[:a.context]
    limit = getattr(cfg, "max_position_embeddings", None)
    if limit and a.context + a.steps > limit:
        sys.exit("dump_kv: --context + --steps = %d exceeds the model's max_position_embeddings %d"
                 % (a.context + a.steps, limit))

    gen = torch.Generator(device="cpu").manual_seed(a.seed)
    with torch.no_grad():
        x = torch.tensor([ids], device=a.device)
        out = model(input_ids=x, use_cache=True)
        past = out.past_key_values
        logits = out.logits[0, -1]
        for _ in range(a.steps):
            if a.temperature > 0:
                p = torch.softmax(logits.float().cpu() / a.temperature, dim=-1)
                nxt = int(torch.multinomial(p, 1, generator=gen))
            else:
                nxt = int(torch.argmax(logits))
            ids.append(nxt)
            out = model(input_ids=torch.tensor([[nxt]], device=a.device), past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits = out.logits[0, -1]
        # The whole sequence in one pass: every position's q, k and v (teacher forcing gives
        # what incremental decoding computed, up to kernel rounding), each layer written as
        # it is captured and checked against the decoding cache, which holds the post-RoPE K
        # and V the model wrote step by step.
        T = len(ids)
        name = a.model or ("random " + os.path.basename(a.random_config))
        writer = TraceWriter(
            a.out, a.storage, a.dtype,
            model=dict(name=name, layers=n_layers, q_heads=q_heads, kv_heads=kv_heads, head_dim=head_dim),
            context_tokens=a.context, decode_steps=a.steps, query_begin=qb, layers=layers,
            kv_heads=heads, tokens=ids,
            source="scripts/dump_kv.py: %s on %s (%s, %s decoding, transformers %s)" % (
                name, os.path.basename(a.text), a.torch_dtype,
                "greedy" if a.temperature <= 0 else "T=%g seed %d" % (a.temperature, a.seed),
                transformers.__version__))
        worst_cache = [0.0]

        def write_layer(l, q, k, v, scaling):
            if q.shape != (q_heads, T, head_dim) or k.shape != (kv_heads, T, head_dim) or v.shape != k.shape:
                sys.exit("dump_kv: layer %d: q %s, k %s, v %s; expected q (%d, %d, %d), k/v (%d, %d, %d)"
                         % (l, tuple(q.shape), tuple(k.shape), tuple(v.shape), q_heads, T, head_dim,
                            kv_heads, T, head_dim))
            cached = cache_layer(past, l)
            if cached is not None:  # step by step vs one pass: equal up to kernel rounding
                ck, cv = cached
                n = min(ck.shape[1], T)
                err = max(float((ck[:, :n] - k[:, :n]).abs().max()), float((cv[:, :n] - v[:, :n]).abs().max()))
                ref = max(float(k.abs().max()), float(v.abs().max()), 1e-30)
                tol = 1e-4 if a.torch_dtype == "float32" else 3e-2
                worst_cache[0] = max(worst_cache[0], err / ref)
                if err > tol * ref:
                    sys.exit("dump_kv: layer %d: captured K/V differ from the decoding cache by %.3g (max |x| %.3g); "
                             "the capture is not what the model attends with" % (l, err, ref))
            if scaling is not None:
                writer.manifest["softmax_scale"] = float(scaling)
            qg = q.reshape(kv_heads, group, T, head_dim)[heads, :, qb:, :].permute(0, 2, 1, 3)
            writer.add_layer(l, k[heads].numpy(), v[heads].numpy(), qg.contiguous().numpy())

        cap.sink = write_layer
        model(input_ids=torch.tensor([ids], device=a.device), use_cache=False)
        cap.sink = None

    missing = [l for l in layers if l not in cap.seen]
    if missing:
        sys.exit("dump_kv: layers %s never reached the attention interface; this model does not "
                 "use transformers' AttentionInterface" % missing)
    writer.close()
    print("dump_kv: %d tokens (context %d + %d steps), layers %s, KV heads %s, head_dim %d, group %d -> %s (%s, %s); "
          "K/V vs the decoding cache: max relative difference %.2e"
          % (len(ids), a.context, a.steps, layers, heads, head_dim, group, a.out, a.storage, a.dtype,
             worst_cache[0]))


if __name__ == "__main__":
    main()
