#!/usr/bin/env python3
"""Proves wmap's bitsandbytes exports load in transformers and equal bitsandbytes' own
quantization of the same weights.

For each export (a folder written by `wmapc load DIR --quant nf4|nf4-dq|fp4 --out OUT`):
  1. `AutoModelForCausalLM.from_pretrained(OUT)` loads it (pre-quantized, on CUDA);
  2. the original bf16 checkpoint is loaded with `BitsAndBytesConfig(load_in_4bit=True, …)`
     so bitsandbytes quantizes it itself;
  3. every Linear4bit's packed codes, absmax and dequantized weight are compared;
  4. a forward pass on fixed token ids compares the logits.
Prints one table row per export; exits 1 on any difference.

usage: verify_export.py ORIG_DIR EXPORT_DIR:TYPE[:dq] ...
"""
import sys

import torch
import bitsandbytes as bnb
import bitsandbytes.functional as F
import transformers
from transformers import AutoModelForCausalLM, BitsAndBytesConfig


def linear4bit(model):
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, bnb.nn.Linear4bit):
            qs = m.weight.quant_state
            deq = F.dequantize_4bit(m.weight.data, qs).to(torch.bfloat16)
            absmax = qs.absmax if not qs.nested else F.dequantize_blockwise(qs.absmax, qs.state2) + qs.offset
            out[name] = (m.weight.data.view(torch.uint8).flatten(), absmax.float(), deq)
    return out


def main():
    orig, specs = sys.argv[1], sys.argv[2:]
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, bitsandbytes {bnb.__version__}, "
          f"{torch.cuda.get_device_name(0)}")
    ids = (torch.arange(48, device="cuda").reshape(1, 48) * 7 + 3) % 320
    rows, ok = [], True
    for spec in specs:
        path, qtype, *rest = spec.split(":")
        dq = rest == ["dq"]
        ours = AutoModelForCausalLM.from_pretrained(path, device_map="cuda")
        ref = AutoModelForCausalLM.from_pretrained(
            orig,
            dtype=torch.bfloat16,
            device_map="cuda",
            quantization_config=BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=qtype,
                bnb_4bit_use_double_quant=dq,
                bnb_4bit_compute_dtype=torch.bfloat16,
            ),
        )
        a, b = linear4bit(ours), linear4bit(ref)
        assert a.keys() == b.keys() and a, f"{spec}: different Linear4bit sets"
        codes = sum(int((a[k][0] != b[k][0]).sum()) for k in a)
        absmax = sum(int((a[k][1] != b[k][1]).sum()) for k in a)
        deq = sum(int((a[k][2] != b[k][2]).sum()) for k in a)
        n = sum(a[k][2].numel() for k in a)
        with torch.no_grad():
            la, lb = ours(ids).logits.float(), ref(ids).logits.float()
        same_logits = torch.equal(la, lb)
        diff = (la - lb).abs().max().item()
        rows.append((f"{qtype}{'-dq' if dq else ''}", len(a), n, codes, absmax, deq, same_logits, diff))
        ok &= codes == 0 and absmax == 0 and deq == 0 and same_logits
        del ours, ref
        torch.cuda.empty_cache()
    print(f"{'export':<8} {'layers':>6} {'weights':>8} {'codes≠':>7} {'absmax≠':>8} {'dequant≠':>9} {'logits equal':>13} {'max |Δlogit|':>13}")
    for r in rows:
        print(f"{r[0]:<8} {r[1]:>6} {r[2]:>8} {r[3]:>7} {r[4]:>8} {r[5]:>9} {str(r[6]):>13} {r[7]:>13.3g}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
