#!/usr/bin/env python3
"""Train the byte-level GQA decoder of model.py on corpus/train.bin (build_corpus.py).

Reproduce (one H200, bf16 autocast, torch.compile):
  python3 train.py --corpus corpus --out out --steps 560 --batch 16 --seq 16384 --seed 1234
Writes out/train_log.tsv (step, tokens, loss, lr, seconds), out/model-0000N-of-0000M.safetensors
(bf16 weights, shards of at most 15 MB), out/config.json, out/reference_logits.npy (fp32 logits
of the first 1024 val bytes, to check the numpy forward of dump_trace.py against).
"""
import argparse, json, math, os, sys, time
import numpy as np
import torch
import torch.nn.functional as F
from model import CONFIG, Decoder


def save_sharded(model, out, max_bytes=15 * 2**20):
    from safetensors.torch import save_file
    sd = {k: v.detach().to(torch.bfloat16).contiguous().cpu() for k, v in model.state_dict().items()}
    shards, cur, size = [], {}, 0
    for k in sorted(sd):
        nb = sd[k].numel() * 2
        if cur and size + nb > max_bytes:
            shards.append(cur); cur, size = {}, 0
        cur[k] = sd[k]; size += nb
    shards.append(cur)
    for i, s in enumerate(shards):
        save_file(s, os.path.join(out, f"model-{i+1:05d}-of-{len(shards):05d}.safetensors"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default="corpus")
    ap.add_argument("--out", default="out")
    ap.add_argument("--steps", type=int, default=560)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=16384)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--compile", type=int, default=1)
    ap.add_argument("--doc_start_fraction", type=float, default=0.0,
                    help="share of training windows that start at a document separator (byte 2, "
                         "which then acts as a BOS token at position 0); the rest start anywhere")
    ap.add_argument("--max_seconds", type=float, default=1e9,
                    help="safety stop (the schedule is by step; a stop before --steps is logged)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    torch.manual_seed(a.seed)
    dev = "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    data = torch.from_numpy(np.fromfile(os.path.join(a.corpus, "train.bin"), dtype=np.uint8)).to(dev)
    val = torch.from_numpy(np.fromfile(os.path.join(a.corpus, "val.bin"), dtype=np.uint8)).to(dev)
    print(f"torch {torch.__version__} {torch.cuda.get_device_name()} train {data.numel()} B val {val.numel()} B",
          flush=True)
    model = Decoder(CONFIG).to(dev)
    nparams = sum(p.numel() for p in model.parameters())
    print(f"params {nparams}", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    nodecay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": nodecay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)
    fwd = torch.compile(model) if a.compile else model
    gen = torch.Generator(device=dev); gen.manual_seed(a.seed)
    offs = torch.arange(a.seq + 1, device=dev)
    seps = torch.nonzero(data == 2).flatten()
    seps = seps[seps < data.numel() - a.seq - 1]

    def batch(src, n, g, doc_frac=0.0):
        i = torch.randint(0, src.numel() - a.seq - 1, (n,), device=dev, generator=g)
        if doc_frac > 0:
            nd = int(round(doc_frac * n))
            j = torch.randint(0, seps.numel(), (nd,), device=dev, generator=g)
            i[:nd] = seps[j]
        w = src[i[:, None] + offs[None]].long()
        return w[:, :-1], w[:, 1:]

    def lr_at(s):
        if s < a.warmup:
            return a.lr * (s + 1) / a.warmup
        p = (s - a.warmup) / max(1, a.steps - a.warmup)
        return a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))

    log = open(os.path.join(a.out, "train_log.tsv"), "w")
    log.write("step\ttokens\tloss\tlr\tseconds\n")
    t0 = time.time(); tokens = 0; step = 0
    for step in range(a.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        x, y = batch(data, a.batch, gen, a.doc_start_fraction)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = fwd(x)
        loss = F.cross_entropy(logits.float().view(-1, 256), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens += x.numel()
        if step % 10 == 0 or step == a.steps - 1:
            l = loss.item(); el = time.time() - t0
            log.write(f"{step}\t{tokens}\t{l:.4f}\t{lr_at(step):.2e}\t{el:.1f}\n"); log.flush()
            print(f"step {step} tok {tokens/1e6:.1f}M loss {l:.4f} ({l/math.log(2):.3f} bit/B) "
                  f"{el:.0f}s {tokens/max(el,1e-9)/1e3:.0f}k tok/s mem {torch.cuda.max_memory_allocated()/2**30:.1f}G",
                  flush=True)
        if time.time() - t0 > a.max_seconds:
            print(f"SAFETY STOP at step {step} (schedule was {a.steps})", flush=True)
            log.write(f"# safety stop at step {step} of {a.steps}\n")
            break
    train_s = time.time() - t0
    # validation: 8 fixed windows at the training length, fixed generator
    model.eval()
    vg = torch.Generator(device=dev); vg.manual_seed(0)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        vl = []
        for _ in range(4):
            x, y = batch(val, 2, vg)
            vl.append(F.cross_entropy(model(x).float().view(-1, 256), y.reshape(-1)).item())
        ref_in = val[:1024].long()[None]
        ref = model(ref_in).float()[0].cpu().numpy()
    vloss = float(np.mean(vl))
    np.save(os.path.join(a.out, "reference_logits.npy"), ref)
    save_sharded(model, a.out)
    summary = {"config": CONFIG, "params": nparams, "steps_done": step + 1, "steps_planned": a.steps,
               "batch": a.batch, "seq": a.seq, "doc_start_fraction": a.doc_start_fraction, "tokens": tokens, "lr": a.lr, "warmup": a.warmup,
               "seed": a.seed, "train_seconds": round(train_s, 1), "final_train_loss": loss.item(),
               "val_loss_nats_per_byte": vloss, "val_bits_per_byte": vloss / math.log(2),
               "torch": torch.__version__, "gpu": torch.cuda.get_device_name()}
    json.dump(summary, open(os.path.join(a.out, "config.json"), "w"), indent=1)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
