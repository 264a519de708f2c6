# Usage: python affected.py DATA_DIR  (the share of training and evaluation targets whose context packing cuts)
# How much of the evaluation packing touches: the same windows as xforget-eval (evenly spaced starts).
import json, numpy as np
import sys
d = sys.argv[1]  # the prepared data directory (prepare.input=stdlib_files)
m = json.load(open(f"{d}/meta.json")); eot = m["eot_id"]
val = np.fromfile(f"{d}/val.bin", dtype=np.uint16).astype(np.int64)
train = np.fromfile(f"{d}/train.bin", dtype=np.uint16)
print("val tokens", len(val), "eot", int((val == eot).sum()), "train tokens", len(train), "eot", int((train == eot).sum()))
for L, count in ((512, 240), (4096, 30)):
    last = len(val) - L - 1
    starts = np.round(np.linspace(0, last, count)).astype(np.int64)
    cut = ctx_u = ctx_p = 0; wins_with = 0
    for s in starts:
        x = val[s:s + L]  # model inputs
        is_e = (x == eot).astype(np.int64); docid = np.cumsum(is_e) - is_e
        pos = np.arange(L)
        # first position of each doc id in the window
        first = np.zeros(L, dtype=np.int64); first[1:] = (docid[1:] != docid[:-1]) * pos[1:]
        first = np.maximum.accumulate(first)
        cut += int((docid > 0).sum()); wins_with += int(docid[-1] > 0)
        ctx_u += (pos + 1).sum(); ctx_p += (pos - first + 1).sum()
    print(f"L={L}: {count} windows, {wins_with} cross a boundary, targets with a cut context {cut / (count * L):.3f}, "
          f"mean context unpacked {ctx_u / (count * L):.0f} packed {ctx_p / (count * L):.0f} tokens")
for L in (512, 4096):  # the pruning window: val_windows(val, L - 1, 1) starts at 0
    x = val[:L]; print(f"pruning window L={L}: eot at", np.nonzero(x == eot)[0].tolist())
# training windows: the share of training targets whose context packing cuts (random 512-token slices)
rng = np.random.default_rng(0); starts = rng.integers(0, len(train) - 513, 2000); cut = 0
for s in starts:
    x = train[s:s + 512]; is_e = (x == eot).astype(np.int64); cut += int(((np.cumsum(is_e) - is_e) > 0).sum())
print(f"train 512-windows (2000 random): targets with a cut context {cut / (2000 * 512):.3f}")
